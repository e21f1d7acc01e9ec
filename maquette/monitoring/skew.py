"""Training/serving skew: were the features served the ones training would have seen?

For a seeded sample of logged predictions, the features are recomputed from the offline store
point in time as of each prediction's request time (the same `training_frame` training uses)
and compared with what the model received online (a served value, or null when it was missing
or stale). Mismatch rate per feature; a few examples of each mismatch are kept for the report.
Michelangelo's rule: the same feature definitions for training and serving, checked on live data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from maquette import registry
from maquette.config import Settings
from maquette.features.layer import FeatureLayer
from maquette.monitoring.drift import SEED, served_inputs

TIMESTAMP = "__request_time"


@dataclass
class SkewReport:
    model: str
    version: str
    rows: int
    mismatch_rate: dict[str, float]
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max(self.mismatch_rate.values(), default=0.0)


def _agree(served: Any, offline: Any, tolerance: float) -> bool:
    def null(v: Any) -> bool:
        return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))

    if null(served) or null(offline):
        return null(served) and null(offline)
    if isinstance(served, int | float) and isinstance(offline, int | float):
        scale = max(1.0, abs(float(served)), abs(float(offline)))
        return abs(float(served) - float(offline)) <= tolerance * scale
    return str(served) == str(offline)


def skew_report(
    settings: Settings, name: str, scored: pa.Table, layer: FeatureLayer | None = None
) -> list[SkewReport]:
    """Per served version: the share of sampled predictions whose feature differs offline."""
    frame = scored.to_pandas()
    layer = layer or FeatureLayer(settings)
    reports = []
    for version_id, rows in frame.groupby("version"):
        version = registry.resolve(settings, f"{name}:{version_id}")
        record = version.record
        features = list(record.feature_names)
        if len(rows) > settings.monitoring.skew_sample:
            rows = rows.sample(settings.monitoring.skew_sample, random_state=SEED)
        served = served_inputs(rows, features)
        entities = pd.DataFrame.from_records([json.loads(e) for e in rows["entity"]])
        fields = list(layer.read_plan(record.feature_service).request_fields)
        requests = pd.DataFrame.from_records(
            [{k: json.loads(r).get(k) for k in fields} for r in rows["request"]], columns=fields
        )
        for column in fields:
            # Request fields of the on-demand views are times (as the server parsed them).
            requests[column] = pd.to_datetime(requests[column], utc=True, format="ISO8601")
        entity_frame = pd.concat([entities, requests], axis=1)
        entity_frame[TIMESTAMP] = rows["request_time"].to_numpy()
        offline = (
            layer.training_frame(entity_frame, record.feature_service, TIMESTAMP)
            .to_pandas()
            .reset_index(drop=True)
        )
        served = served.reset_index(drop=True)
        rates: dict[str, float] = {}
        examples: dict[str, list[dict[str, Any]]] = {}
        tolerance = settings.monitoring.skew_tolerance
        for feature in features:
            pairs = zip(served[feature].tolist(), offline[feature].tolist(), strict=True)
            bad = [i for i, (a, b) in enumerate(pairs) if not _agree(a, b, tolerance)]
            rates[feature] = len(bad) / len(served) if len(served) else 0.0
            examples[feature] = [
                {
                    "entity": entities.iloc[i].to_dict(),
                    "request_time": str(entity_frame[TIMESTAMP].iloc[i]),
                    "served": _plain(served[feature].iloc[i]),
                    "offline": _plain(offline[feature].iloc[i]),
                }
                for i in bad[:3]
            ]
        reports.append(SkewReport(name, str(version_id), len(served), rates, examples))
    return reports


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value
