"""Training/serving skew: were the features served the ones training would have seen?

For a seeded sample of logged predictions, the features are recomputed from the offline store
point in time as of each prediction's request time (the same `training_frame` training uses)
and compared with what the model received online (a served value, or null when it was missing
or stale). Mismatch rate per feature; a few examples of each mismatch are kept for the report.
Michelangelo's rule: the same feature definitions for training and serving, checked on live data.

`skew_windows` does this per alert window of the model (at most `monitoring.skew_sample`
predictions each), so a feature served in other units from some day on shows from that day's
window on. Complete windows are kept in `offline_store/monitoring/NAME_skew_WINDOW.json` and
reused while their row count is unchanged: an hourly pass recomputes only the open window.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from feast.types import FeastType, PrimitiveFeastType

from maquette import registry
from maquette.config import Settings
from maquette.data.shared_files import replace_whole
from maquette.features.layer import FeatureLayer
from maquette.monitoring.drift import Window, windows_of
from maquette.monitoring.reference import SEED, served_inputs
from maquette.version_record import VersionRecord
from maquette.window_spec import WindowSpec, parse_window

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


@dataclass
class SkewWindow:
    """Skew of one version in one alert window, on a sample of its predictions."""

    model: str
    version: str
    window: str  # canonical window name
    window_start: str
    window_end: str
    complete: bool
    rows: int  # sampled predictions compared
    predictions: int  # predictions in the window
    enough: bool  # predictions >= the model's thresholds.min_rows
    mismatch_rate: dict[str, float]
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fingerprint: str = ""  # skew_sample, skew_tolerance, min_rows it was computed with

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


@dataclass
class _Compared:
    """Sampled predictions with what was served and what the offline store gives back."""

    served: pd.DataFrame
    offline: pd.DataFrame
    entities: pd.DataFrame
    times: pd.Series


def _typed(value: Any, kind: FeastType | None) -> Any:
    """A logged key value as its declared type (a string key logged as the number 7 is "7");
    None when it cannot be one (that row's offline features are then missing)."""
    if isinstance(value, float) and math.isnan(value):  # a key missing from some entries
        return None
    if value is None or kind is None:
        return value
    if kind in (PrimitiveFeastType.INT64, PrimitiveFeastType.INT32):
        if isinstance(value, bool):
            return None
        try:
            number = int(value) if not isinstance(value, float) or value.is_integer() else None
        except (TypeError, ValueError):
            return None
        return number if number is not None and -(2**63) <= number < 2**63 else None
    if kind == PrimitiveFeastType.STRING:
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if isinstance(value, str) else json.dumps(value)
    return value


def typed_entities(entities: pd.DataFrame, types: dict[str, FeastType]) -> pd.DataFrame:
    """Logged entity keys in their declared types: the offline recomputation joins on them."""
    out = entities.copy()
    for column in out.columns:
        kind = types.get(str(column))
        values = out[column].tolist()
        if kind is not None and [_typed(v, kind) for v in values] != values:
            out[column] = pd.Series(
                [_typed(v, kind) for v in out[column].tolist()], index=out.index, dtype=object
            )
            if kind in (PrimitiveFeastType.INT64, PrimitiveFeastType.INT32):
                out[column] = out[column].astype("Int64")
    return out


def _compare(layer: FeatureLayer, record: VersionRecord, rows: pd.DataFrame) -> _Compared:
    """Recompute the features of `rows` offline, point in time as of each request time."""
    features = list(record.feature_names)
    served = served_inputs(rows, features).reset_index(drop=True)
    plan = layer.read_plan(record.feature_service)
    entities = typed_entities(
        pd.DataFrame.from_records([json.loads(e) for e in rows["entity"]]), plan.field_types
    )
    fields = list(plan.request_fields)
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
    return _Compared(served, offline, entities, entity_frame[TIMESTAMP])


def _mismatches(
    found: _Compared, features: list[str], positions: list[int], tolerance: float
) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """Mismatch rate and up to three examples per feature, over the rows at `positions`."""
    rates: dict[str, float] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    for feature in features:
        served, offline = found.served[feature], found.offline[feature]
        # Plain Python values, read once: `.iloc` per value was most of a monitoring pass's
        # skew time (and gave numpy integers, which compared as text with served numbers).
        served_values, offline_values = served.tolist(), offline.tolist()
        bad = [i for i in positions if not _agree(served_values[i], offline_values[i], tolerance)]
        rates[feature] = len(bad) / len(positions) if positions else 0.0
        examples[feature] = [
            {
                "entity": found.entities.iloc[i].to_dict(),
                "request_time": str(found.times.iloc[i]),
                "served": _plain(served.iloc[i]),
                "offline": _plain(offline.iloc[i]),
            }
            for i in bad[:3]
        ]
    return rates, examples


def skew_report(
    settings: Settings, name: str, scored: pa.Table, layer: FeatureLayer | None = None
) -> list[SkewReport]:
    """Per served version: the share of sampled predictions whose feature differs offline."""
    frame = scored.to_pandas()
    layer = layer or FeatureLayer(settings)
    reports = []
    for version_id, rows in frame.groupby("version"):
        record = registry.resolve(settings, f"{name}:{version_id}").record
        if len(rows) > settings.monitoring.skew_sample:
            rows = rows.sample(settings.monitoring.skew_sample, random_state=SEED)
        found = _compare(layer, record, rows)
        rates, examples = _mismatches(
            found,
            list(record.feature_names),
            list(range(len(rows))),
            settings.monitoring.skew_tolerance,
        )
        reports.append(SkewReport(name, str(version_id), len(rows), rates, examples))
    return reports


def skew_path(settings: Settings, name: str, window: str) -> Path:
    return settings.offline_store / "monitoring" / f"{name}_skew_{window}.json"


def stored_skew(settings: Settings, name: str, window: str) -> list[SkewWindow]:
    """The skew windows the monitoring passes stored for `name` in `window`, oldest first."""
    found = _load(skew_path(settings, name, window))
    return sorted(found.values(), key=lambda w: (w.window_start, w.version))


def _load(path: Path) -> dict[tuple[str, str], SkewWindow]:
    if not path.is_file():
        return {}
    known = set(SkewWindow.__dataclass_fields__)
    windows = [
        SkewWindow(**{k: v for k, v in entry.items() if k in known})
        for entry in json.loads(path.read_text())
    ]
    return {(w.version, w.window_start): w for w in windows}


def skew_windows(
    settings: Settings,
    name: str,
    scored: pa.Table,
    window: str | WindowSpec | None = None,
    as_of: datetime | None = None,
    layer: FeatureLayer | None = None,
) -> list[SkewWindow]:
    """Per (version, alert window): mismatch rate per feature on a seeded sample of the window.

    `window` defaults to the model's alert window. Only rows requested before `as_of` count.
    """
    as_of = as_of or datetime.now(UTC)
    watch = settings.monitoring_of(name)
    spec = parse_window(window) if isinstance(window, str) else window or watch.alert_window
    min_rows, cap = watch.thresholds.min_rows, settings.monitoring.skew_sample
    fingerprint = f"{cap}|{settings.monitoring.skew_tolerance}|{min_rows}"
    frame = scored.to_pandas()
    frame = frame[frame["request_time"] < pd.Timestamp(as_of)]
    path = skew_path(settings, name, spec.name)
    kept = _load(path)
    out: list[SkewWindow] = []
    for version_id, rows in frame.groupby("version"):
        version = str(version_id)
        todo: list[tuple[Window, pd.DataFrame]] = []
        for w in windows_of(rows, spec, as_of):
            previous = kept.get((version, w.start.isoformat()))
            if (
                previous is not None
                and previous.complete
                and previous.predictions == len(w.rows)
                and previous.fingerprint == fingerprint
            ):
                out.append(previous)
                continue
            sample = w.rows.sample(cap, random_state=SEED) if len(w.rows) > cap else w.rows
            todo.append((w, sample))
        out += _computed(settings, layer, name, version, spec, todo, min_rows, fingerprint)
    out.sort(key=lambda s: (s.version, s.window_start))
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_whole(path, json.dumps([asdict(s) for s in out], indent=1, default=str))
    return out


def _computed(
    settings: Settings,
    layer: FeatureLayer | None,
    name: str,
    version: str,
    spec: WindowSpec,
    todo: list[tuple[Window, pd.DataFrame]],
    min_rows: int,
    fingerprint: str,
) -> list[SkewWindow]:
    """Skew of the windows to (re)compute: one offline recomputation for all their samples."""
    judged = [(w, s) for w, s in todo if len(w.rows) >= min_rows]
    out = [
        SkewWindow(
            name,
            version,
            spec.name,
            w.start.isoformat(),
            w.end.isoformat(),
            w.complete,
            len(s),
            len(w.rows),
            False,
            {},
            {},
            fingerprint,
        )
        for w, s in todo
        if len(w.rows) < min_rows
    ]
    if not judged:
        return out
    record = registry.resolve(settings, f"{name}:{version}").record
    found = _compare(layer or FeatureLayer(settings), record, pd.concat([s for _, s in judged]))
    features, first = list(record.feature_names), 0
    for w, sample in judged:
        positions = list(range(first, first + len(sample)))
        first += len(sample)
        rates, examples = _mismatches(
            found, features, positions, settings.monitoring.skew_tolerance
        )
        out.append(
            SkewWindow(
                name,
                version,
                spec.name,
                w.start.isoformat(),
                w.end.isoformat(),
                w.complete,
                len(sample),
                len(w.rows),
                True,
                rates,
                examples,
                fingerprint,
            )
        )
    return out


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value
