"""Benchmark only: the stock composition a user writes first, a BentoML service that calls
`FeatureStore.get_online_features` and then the model (no prediction log, no GC tuning).

Served by `maquette bench serving` as `maquette.bench.stock_service:StockService`, for the
project in MAQUETTE_PROJECT_DIR; it answers with the model the Maquette service answers a
request naming none with.
"""

from __future__ import annotations

from typing import Any

import bentoml
import pandas as pd

from maquette import registry
from maquette.bench.harness import default_model
from maquette.config import load_settings
from maquette.features.layer import FeatureLayer
from maquette.features.read_plan import time_request_fields
from maquette.training.model_types import TrainedModel

SETTINGS = load_settings()


def _time_fields(layer: FeatureLayer, service: str) -> list[str]:
    """The request fields of `service` that are timestamps (sent as ISO 8601 text)."""
    return [
        name for odfv in layer.read_plan(service).odfvs for name in time_request_fields(odfv.view)
    ]


@bentoml.service(name="stock", workers=1)
class StockService:
    def __init__(self) -> None:
        selector = f"{default_model(SETTINGS)}@{SETTINGS.serving.default_alias}"
        version = registry.resolve(SETTINGS, selector)
        self.model = TrainedModel.load(version.path, version.record)
        layer = FeatureLayer(SETTINGS)
        self.store = layer.store
        self.service = layer.feature_service(version.record.feature_service)
        self.times = _time_fields(layer, version.record.feature_service)

    # bentoml.api is untyped; the method's own annotations still describe the endpoint.
    @bentoml.api(route="/predict")  # type: ignore[untyped-decorator]
    def predict(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        for row in rows:
            for name in self.times:
                row[name] = pd.Timestamp(row[name]).to_pydatetime()
        features = self.store.get_online_features(features=self.service, entity_rows=rows).to_df()
        # All-null columns come back as object dtype, which LightGBM refuses: coerce numerics.
        for name in self.model.features:
            if name not in self.model.categories:
                features[name] = pd.to_numeric(features[name], errors="coerce")
        predictions, _ = self.model.predict(features)
        return {"predictions": [float(p) for p in predictions]}
