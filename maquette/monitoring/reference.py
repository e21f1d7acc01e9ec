"""Drift references: what a window of served traffic is compared with.

Three kinds, chosen per model (`monitoring.reference`, `models.<name>.monitoring.reference`):
- `training`: a seeded sample of the version's train split (what the model learned from);
- `trailing`: the `reference_trailing` period right before the window (28 days by default);
- `season`: the window's own period `reference_season` earlier (364 days keeps weekdays).

A trailing or season period is filled with served rows where traffic was served (features as
the model received them, the logged predictions) and, before the first served row, with the
version's own split rows of that period (train/validation/test files, the version's
predictions on them), so the first served windows already have a reference. A period with
fewer than `reference_min_rows` rows falls back to training, and the note says so. Every
reference is capped at `reference_rows` rows by a seeded sample.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from maquette import registry
from maquette.config import Settings
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.monitoring.labels import LABEL
from maquette.training.model_types import LABEL as TRAINING_LABEL
from maquette.training.model_types import SPLITS, TrainedModel
from maquette.window_spec import parse_duration

SEED = 7
KINDS = ("training", "trailing", "season")
# References worked out in this process, by version, kind, period and the served rows in it:
# a trailing reference is the same for every report of a pass that looks at the same period.
_CACHE: dict[tuple[Any, ...], tuple[pd.DataFrame, str, str]] = {}
_CACHE_SIZE = 16


def served_inputs(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The feature values the model received: served values, missing or stale ones as null."""
    decoded = [_decoded(s) for s in frame["features"]]
    hidden = [
        set(m if m is not None else ()) | set(s if s is not None else ())
        for m, s in zip(frame["missing"], frame["stale"], strict=True)
    ]
    columns = {f: [v.get(f) for v in decoded] for f in features}
    for i, names in enumerate(hidden):  # few rows hide anything: built by column, fixed here
        for name in names:
            if name in columns:
                columns[name][i] = None
    return pd.DataFrame(columns, columns=features, index=frame.index)


def _decoded(text: str) -> dict[str, Any]:
    # orjson: a quarter of json's time (a pass decodes the same served rows for each window
    # and reference); json for what orjson refuses (NaN, written by older logs).
    try:
        return dict(orjson.loads(text))
    except orjson.JSONDecodeError:
        return dict(json.loads(text))


def served_rows(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Scored-prediction rows as drift compares them: served features, prediction, label."""
    out = served_inputs(frame, features)
    out["prediction"] = frame["prediction"].to_numpy(float)
    out[LABEL] = frame[LABEL].to_numpy(float)
    return out


def period_of(settings: Settings, kind: str, start: datetime, end: datetime) -> tuple[Any, Any]:
    """[lo, hi) of a trailing or season reference for the window [start, end)."""
    if kind == "trailing":
        return start - parse_duration(settings.monitoring.reference_trailing), start
    back = parse_duration(settings.monitoring.reference_season)
    return start - back, end - back


def reference_frame(
    settings: Settings,
    version: registry.ModelVersion,
    kind: str,
    start: datetime,
    end: datetime,
    scored: pd.DataFrame | pa.Table | None = None,
) -> tuple[pd.DataFrame, str, str]:
    """The reference of the window [start, end): (rows, kind actually used, which rows in words).

    Rows hold the version's features, `prediction` and `label` (null where unknown).
    `scored` is the model's scored-predictions table (served rows of every version).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown reference kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "training":
        return _cached(
            ("training", str(version.path), settings.monitoring.reference_rows),
            lambda: _training(settings, version),
        )
    frame = scored.to_pandas() if isinstance(scored, pa.Table) else scored
    lo, hi = period_of(settings, kind, start, end)
    served = _served_in(frame, lo, hi)
    # Where traffic was served, the served rows stand for the period; before the first one,
    # the version's split rows do (never both for the same time).
    first = _first_served(frame)
    # Two projects (the benchmark's clean and faulty replays) share model versions and periods:
    # the offline store tells their served rows apart.
    key = (
        str(settings.offline_store),
        kind,
        str(version.path),
        lo,
        hi,
        len(served),
        first,
        settings.monitoring.reference_rows,
    )
    return _cached(
        key,
        lambda: _period_reference(settings, version, kind, lo, hi, served, first),
    )


def _cached(key: tuple[Any, ...], make: Any) -> tuple[pd.DataFrame, str, str]:
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = make()
    frame, used, note = _CACHE[key]
    return frame.copy(), used, note


def _served_in(frame: pd.DataFrame | None, lo: datetime, hi: datetime) -> pd.DataFrame:
    if frame is None or frame.empty:
        return pd.DataFrame()
    times = frame["request_time"]
    return frame[(times >= pd.Timestamp(lo)) & (times < pd.Timestamp(hi))]


def _first_served(frame: pd.DataFrame | None) -> pd.Timestamp | None:
    if frame is None or frame.empty:
        return None
    return pd.Timestamp(frame["request_time"].min())


def _training(settings: Settings, version: registry.ModelVersion) -> tuple[pd.DataFrame, str, str]:
    """A seeded sample of the version's train split, with the version's predictions on it."""
    record = version.record
    path = record.data["train"].path
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"the training set of {version.tag} is gone ({path}); drift needs it as reference."
        )
    rows = settings.monitoring.reference_rows
    frame = (
        duckdb_connection(quiet=True)
        .sql(
            f"SELECT * FROM read_parquet({sql_literal(path)}) "
            f"USING SAMPLE reservoir({rows} ROWS) REPEATABLE ({SEED})"
        )
        .df()
    )
    frame = _with_predictions(version, frame)
    note = f"training split of {version.tag}: {len(frame):,} sampled of {record.data['train'].rows:,} rows"
    return frame, "training", note


def _with_predictions(version: registry.ModelVersion, frame: pd.DataFrame) -> pd.DataFrame:
    """Split rows as drift compares them: the features, the version's prediction, the label."""
    record = version.record
    out = frame.rename(columns={TRAINING_LABEL: LABEL})
    if len(out):
        model = TrainedModel.load(version.path, record)
        out["prediction"], _ = model.predict(frame)
    else:
        out["prediction"] = pd.Series(dtype=float)
    return out[[*record.feature_names, "prediction", LABEL]].reset_index(drop=True)


def _split_rows(
    settings: Settings, version: registry.ModelVersion, lo: datetime, hi: datetime
) -> tuple[pd.DataFrame, list[str]]:
    """The version's split rows whose event time is in [lo, hi), and the splits they came from."""
    record = version.record
    ts = settings.model_spec(version.name).timestamp_column
    parts, used = [], []
    con = duckdb_connection(quiet=True)
    for split in SPLITS:
        data = record.data.get(split)
        if data is None or not Path(data.path).is_file() or data.first_event is None:
            continue
        if pd.Timestamp(data.first_event) >= pd.Timestamp(hi) or (
            data.last_event is not None and pd.Timestamp(data.last_event) < pd.Timestamp(lo)
        ):
            continue
        part = con.sql(
            f"SELECT * FROM read_parquet({sql_literal(data.path)}) "
            f'WHERE "{ts}" >= {sql_literal(pd.Timestamp(lo).isoformat())}::TIMESTAMPTZ '
            f'AND "{ts}" < {sql_literal(pd.Timestamp(hi).isoformat())}::TIMESTAMPTZ'
        ).df()
        if len(part):
            parts.append(part)
            used.append(split)
    if not parts:
        return pd.DataFrame(columns=[*record.feature_names, "prediction", LABEL]), []
    return _with_predictions(version, pd.concat(parts, ignore_index=True)), used


def _period_reference(
    settings: Settings,
    version: registry.ModelVersion,
    kind: str,
    lo: datetime,
    hi: datetime,
    served: pd.DataFrame,
    first: pd.Timestamp | None,
) -> tuple[pd.DataFrame, str, str]:
    """Served rows of [lo, hi) and, before the first served row, the version's split rows."""
    features = list(version.record.feature_names)
    split_hi = hi if first is None else min(pd.Timestamp(hi), first)
    split, splits = (
        _split_rows(settings, version, lo, split_hi)
        if pd.Timestamp(split_hi) > pd.Timestamp(lo)
        else (pd.DataFrame(), [])
    )
    parts = [
        p
        for p in (served_rows(served, features) if len(served) else None, split)
        if p is not None and len(p)
    ]
    found = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    span = f"{pd.Timestamp(lo):%Y-%m-%d %H:%M} → {pd.Timestamp(hi):%Y-%m-%d %H:%M} UTC"
    what = (
        " + ".join(
            [
                *([f"{len(served):,} served rows"] if len(served) else []),
                *([f"{len(split):,} {'/'.join(splits)} split rows"] if len(split) else []),
            ]
        )
        or "no rows"
    )
    if len(found) < settings.monitoring.reference_min_rows:
        frame, _, training = _training(settings, version)
        note = (
            f"fallback: {training}; only {len(found):,} rows in the {kind} period {span} "
            f"(reference_min_rows {settings.monitoring.reference_min_rows:,})"
        )
        return frame, "training", note
    note = f"{kind} {span}: {what}"
    cap = settings.monitoring.reference_rows
    if len(found) > cap:
        note += f", sampled {cap:,} of {len(found):,}"
        found = found.sample(cap, random_state=SEED).reset_index(drop=True)
    return found, kind, note


def reference_period_rows(
    settings: Settings, kind: str, start: datetime, end: datetime, scored: pd.DataFrame
) -> int:
    """Served rows in the reference period of [start, end) (what makes a kept report stale)."""
    if kind == "training":
        return 0
    lo, hi = period_of(settings, kind, start, end)
    return len(_served_in(scored, lo, hi))
