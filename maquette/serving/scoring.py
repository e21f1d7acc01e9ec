"""Scoring one request column-wise: feature columns in, a model's answers and their log entry out.

A request's rows are never turned into one dict each: the online read gives feature columns,
the model gets one float matrix (`TrainedModel.matrix_of`), the answers stay columns
(`Answers`), and the prediction log gets one entry per request holding its predictions as
columns (`log_entry`), which the drain expands into one row per prediction. A 100-row request
paid Python per row at every one of these steps before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from feast.types import FeastType

from maquette.features.layer import FeatureLayer
from maquette.features.online import NOT_FOUND, OUTSIDE_MAX_AGE, PRESENT, OnlineFeatures
from maquette.training.model_types import TrainedModel


@dataclass
class Prediction:
    """One answered row."""

    prediction_id: str
    prediction: float
    model: str
    partition: str
    decision: bool | None = None
    missing_features: list[str] = field(default_factory=list)
    stale_features: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class ServedVersion:
    """A registered version loaded for serving, with what its requests must carry."""

    tag: str
    name: str
    model: TrainedModel
    feature_service: str
    required: tuple[str, ...]
    timestamp_fields: tuple[str, ...]  # request fields declared as timestamps (UnixTimestamp)
    request_fields: tuple[str, ...] = ()  # sent with each row, not entity keys
    key_types: dict[str, FeastType] = field(default_factory=dict)  # declared entity key types

    @property
    def version(self) -> str:
        return self.tag.split(":", 1)[1]


def served_version(
    layer: FeatureLayer, tag: str, model: TrainedModel, feature_service: str
) -> ServedVersion:
    """A model version ready to serve: what its rows carry, and which fields are times (those
    the feature repo declares `UnixTimestamp`, whatever their names)."""
    plan = layer.read_plan(feature_service)
    name = tag.split(":", 1)[0]
    required = tuple(layer.request_keys(feature_service, model.partition_by))
    request_fields = tuple(plan.request_fields)
    # `labels.time_from: row` matches labels on a row field: logged even if no feature reads it.
    spec = layer.settings.models.get(name)
    labels = spec.labels if spec is not None else None
    if labels is not None and labels.time_from == "row" and labels.time_column not in required:
        required += (labels.time_column,)
        request_fields += (labels.time_column,)
    return ServedVersion(
        tag,
        name,
        model,
        feature_service,
        required,
        plan.time_fields,
        request_fields,
        {k: t for g in plan.groups for k, t in g.key_types.items()},
    )


NOTHING: list[str] = []  # shared by rows with no missing (stale) feature: never appended to


@dataclass
class Answers:
    """One request's answers, column-wise: `rows()` gives them as `Prediction`s, `body()` as
    the response's JSON objects."""

    tag: str
    ids: list[str]
    values: list[float]
    partitions: list[str]
    decisions: list[bool] | None
    missing: list[list[str]]
    stale: list[list[str]]

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.rows())

    def _columns(self) -> Iterator[tuple[str, float, str, bool | None, list[str], list[str]]]:
        """(id, value, partition, decision, missing, stale) per prediction."""
        decisions: list[bool] | list[None] = self.decisions or [None] * len(self.ids)
        return zip(
            self.ids, self.values, self.partitions, decisions, self.missing, self.stale, strict=True
        )

    def rows(self) -> list[Prediction]:
        return [
            Prediction(i, v, self.tag, p, d, list(m), list(s))
            for i, v, p, d, m, s in self._columns()
        ]

    def body(self) -> list[dict[str, Any]]:
        return [
            {
                "prediction_id": i,
                "prediction": v,
                "model": self.tag,
                "partition": p,
                "decision": d,
                "missing_features": m,
                "stale_features": s,
            }
            for i, v, p, d, m, s in self._columns()
        ]


@dataclass(frozen=True)
class Flags:
    """Per row, the model's features that were missing or stale, and the rows to give the model
    as missing (`nulled`: (row indices, feature columns) per distinct pattern of statuses).

    Rows are grouped by their pattern of statuses (usually one or two per request: every row
    fresh, or every row stale after a feed stops), so the work per row is one tuple lookup.
    """

    missing: list[list[str]]
    stale: list[list[str]]
    nulled: list[tuple[list[int], list[int]]]


def flags(served: ServedVersion, features: OnlineFeatures) -> Flags:
    names = served.model.features
    status = features.status
    flagged = [
        (j, name, column)
        for j, name in enumerate(names)
        if (column := status.get(name)) is not None
        and (NOT_FOUND in column or OUTSIDE_MAX_AGE in column)
    ]
    if not flagged:
        return Flags([NOTHING] * features.rows, [NOTHING] * features.rows, [])
    missing: list[list[str]] = []
    stale: list[list[str]] = []
    # pattern of statuses -> (missing names, stale names, rows with it, feature columns to null)
    seen: dict[tuple[str, ...], tuple[list[str], list[str], list[int], list[int]]] = {}
    for i, pattern in enumerate(zip(*(column for _, _, column in flagged), strict=True)):
        group = seen.get(pattern)
        if group is None:
            group = seen[pattern] = (
                [n for (_, n, _), s in zip(flagged, pattern, strict=True) if s == NOT_FOUND]
                or NOTHING,
                [n for (_, n, _), s in zip(flagged, pattern, strict=True) if s == OUTSIDE_MAX_AGE]
                or NOTHING,
                [],
                [j for (j, _, _), s in zip(flagged, pattern, strict=True) if s != PRESENT],
            )
        missing.append(group[0])
        stale.append(group[1])
        group[2].append(i)
    return Flags(missing, stale, [(rows, cols) for _, _, rows, cols in seen.values() if cols])


def matrix(served: ServedVersion, features: OnlineFeatures, flagged: Flags) -> np.ndarray:
    """The model's input rows: stale or missing values reach the model as missing, as in
    training (Feast's TTL nulls them in training frames)."""
    x = served.model.matrix_of(features.columns, features.rows)
    for rows, cols in flagged.nulled:
        x[np.ix_(rows, cols)] = np.nan
    return x


def partitions_of(served: ServedVersion, rows: list[dict[str, Any]]) -> list[str]:
    key = served.model.partition_by
    return [str(r[key]) for r in rows] if key else [""] * len(rows)


def answers(
    served: ServedVersion, predicted: np.ndarray, used: list[str], flagged: Flags
) -> Answers:
    """One request's answers from the model's output for its rows (`used`: the partition model
    each row ran)."""
    model = served.model
    decisions = None
    if model.task == "binary" and model.threshold is not None:
        decisions = (predicted >= model.threshold).tolist()
    return Answers(
        served.tag,
        prediction_ids(len(used)),
        predicted.astype(float).tolist(),
        used,
        decisions,
        flagged.missing,
        flagged.stale,
    )


def prediction_ids(count: int) -> list[str]:
    """`count` random 128-bit ids as 32 hex digits (uuid4().hex's shape), from one urandom
    call instead of one uuid4 per prediction."""
    digits = os.urandom(16 * count).hex()
    return [digits[i : i + 32] for i in range(0, 32 * count, 32)]


def log_entry(
    served: ServedVersion,
    rows: list[dict[str, Any]],
    features: OnlineFeatures,
    answered: Answers,
    times: tuple[datetime, datetime],
    latency_ms: float,
    shadow: bool,
) -> dict[str, Any]:
    """One request's predictions as one prediction-log entry, its fields as columns (the drain
    expands it to one row per prediction, as `prediction_log.expand` documents).

    `rows` hold only the declared keys and request fields (request_rules.check_rows), each value
    bounded: what a client sends beyond them never reaches the log.
    """
    as_of, received_at = times
    return {
        "prediction_id": answered.ids,
        "logged_at": datetime.now(UTC).isoformat(),
        "request_time": as_of.isoformat(),
        "received_at": received_at.isoformat(),
        "model": served.name,
        "version": served.version,
        "partition": answered.partitions,
        "shadow": shadow,
        "prediction": answered.values,
        "decision": answered.decisions,
        "latency_ms": latency_ms,
        "entity": {
            k: [r[k] for r in rows] for k in served.required if k not in served.request_fields
        },
        "request": {k: [r.get(k) for r in rows] for k in served.request_fields if k in rows[0]},
        "features": {
            f: features.columns.get(f) or [None] * features.rows for f in served.model.features
        },
        "missing": answered.missing,
        "stale": answered.stale,
    }
