"""Benchmark only: the stock composition a user writes first, a BentoML service that calls
`FeatureStore.get_online_features` and then the model (no prediction log, no GC tuning)."""

from __future__ import annotations

from typing import Any

import bentoml
import pandas as pd

from maquette import registry
from maquette.config import load_settings
from maquette.features.layer import FeatureLayer
from maquette.training.pipeline import TrainedModel

SETTINGS = load_settings()


@bentoml.service(name="stock", workers=1)
class StockService:
    def __init__(self) -> None:
        version = registry.resolve(SETTINGS, "flight_delay@production")
        self.model = TrainedModel.load(version.path, version.record)
        layer = FeatureLayer(SETTINGS)
        self.store = layer.store
        self.service = layer.feature_service(version.record["feature_service"])

    @bentoml.api(route="/predict")
    def predict(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        for row in rows:
            row["scheduled_departure"] = pd.Timestamp(row["scheduled_departure"]).to_pydatetime()
        features = self.store.get_online_features(features=self.service, entity_rows=rows).to_df()
        # All-null columns come back as object dtype, which LightGBM refuses: coerce numerics.
        for name in self.model.features:
            if name not in self.model.categories:
                features[name] = pd.to_numeric(features[name], errors="coerce")
        predictions, _ = self.model.predict(features)
        return {"predictions": [float(p) for p in predictions]}
