"""Two versions side by side (MLflow's compare view): metrics with their difference and the
better one marked, parameters (differences first), features used, importance, and which one
wins on each partition."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from maquette.registry import ModelVersion
from maquette.training.metrics import HIGHER_IS_BETTER
from maquette.version_record import VersionRecord


@dataclass
class MetricRow:
    split: str
    metric: str
    a: float | None
    b: float | None
    winner: str  # "a", "b", "" (equal, not comparable, or no direction)

    @property
    def difference(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass
class ParamRow:
    name: str
    a: Any
    b: Any

    @property
    def differs(self) -> bool:
        return bool(self.a != self.b)


@dataclass
class PartitionRow:
    partition: str
    metric: str
    a: float | None
    b: float | None
    served_a: str
    served_b: str
    winner: str


@dataclass
class Comparison:
    a: ModelVersion
    b: ModelVersion
    metrics: list[MetricRow]
    params: list[ParamRow]
    only_a: list[str]
    only_b: list[str]
    shared: list[str]
    importance: list[tuple[str, float | None, float | None]]
    partitions: list[PartitionRow]

    @property
    def wins(self) -> dict[str, int]:
        """Test metrics each version wins."""
        test = [m.winner for m in self.metrics if m.split == "test"]
        return {"a": test.count("a"), "b": test.count("b")}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _winner(metric: str, a: float | None, b: float | None) -> str:
    if a is None or b is None or a == b or metric not in HIGHER_IS_BETTER:
        return ""
    return "a" if (a > b) == HIGHER_IS_BETTER[metric] else "b"


def _metric_rows(split: str, a: dict[str, Any], b: dict[str, Any]) -> list[MetricRow]:
    names = [k for k in dict.fromkeys([*a, *b]) if k in HIGHER_IS_BETTER]
    return [
        MetricRow(split, k, _number(a.get(k)), _number(b.get(k)), "")
        for k in names
        if _number(a.get(k)) is not None or _number(b.get(k)) is not None
    ]


def _partition_rows(metric: str, a: VersionRecord, b: VersionRecord) -> list[PartitionRow]:
    parts_a = a.metrics.test.partitions or {}
    parts_b = b.metrics.test.partitions or {}
    rows = []
    for name in sorted({*parts_a, *parts_b}):
        pa, pb = parts_a.get(name), parts_b.get(name)
        va = _number(pa.model.get(metric)) if pa else None
        vb = _number(pb.model.get(metric)) if pb else None
        rows.append(
            PartitionRow(
                name,
                metric,
                va,
                vb,
                pa.served_by if pa else "",
                pb.served_by if pb else "",
                _winner(metric, va, vb),
            )
        )
    return rows


def compare(a: ModelVersion, b: ModelVersion) -> Comparison:
    ra, rb = a.record, b.record
    metrics = [
        *_metric_rows("test", ra.metrics.test.model, rb.metrics.test.model),
        *_metric_rows("validation", ra.metrics.validation.model, rb.metrics.validation.model),
    ]
    for row in metrics:
        row.winner = _winner(row.metric, row.a, row.b)
    params = [
        ParamRow(k, ra.params.get(k), rb.params.get(k)) for k in sorted({*ra.params, *rb.params})
    ]
    params.sort(key=lambda p: not p.differs)  # the differences first
    features_a, features_b = set(ra.feature_names), set(rb.feature_names)
    importance_names = list(dict.fromkeys([*ra.importance, *rb.importance]))
    importance_names.sort(key=lambda f: -max(ra.importance.get(f, 0.0), rb.importance.get(f, 0.0)))
    headline = ra.search.metric if ra.search.metric in HIGHER_IS_BETTER else "rmse"
    return Comparison(
        a,
        b,
        metrics,
        params,
        sorted(features_a - features_b),
        sorted(features_b - features_a),
        sorted(features_a & features_b),
        [(f, ra.importance.get(f), rb.importance.get(f)) for f in importance_names],
        _partition_rows(headline, ra, rb),
    )
