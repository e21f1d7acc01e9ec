"""Evidently reports of served models: feature drift, prediction drift and quality, per window.

For each drift window of the model (`models.<name>.monitoring.drift_window`, else
`monitoring.report_window`: weekly by default; any window spec, `500 rows` included) and served
version, one Evidently report compares what the model received in that window with a
reference (`reference.py`: the training split, the trailing weeks of traffic, or the same period
a season earlier): data drift of every feature, drift of the prediction, and regression or
classification quality on the rows whose label is known. Each column gets the test its
window's size calls for, and small windows' p-values are corrected for testing many columns at
once (`drift_tests.py`); the share of drifted features is Maquette's count of those verdicts.

Only complete windows are judged (a time window whose end is at or before `as_of`, a count
window holding its N rows); an open window is reported and marked. A window with fewer than
the model's `thresholds.min_rows` predictions is "not enough data": listed, never run through
Evidently. Reports are saved as self-contained HTML under `reports/monitoring/NAME/` and as
snapshots in a local Evidently workspace (`evidently ui --workspace .maquette/evidently`).
Reports of windows whose rows (and reference period) did not change are kept, not recomputed.
Large windows stay fast: a window is sampled down to `monitoring.report_rows`, a reference to
`monitoring.reference_rows`; a report says so.
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from maquette import registry
from maquette.config import Settings
from maquette.data.shared_files import replace_whole
from maquette.monitoring import evidently_runs as runs
from maquette.monitoring.drift_tests import ColumnTests, described_tests, plan_tests, pool_rare
from maquette.monitoring.evidently_runs import open_workspace, reports_dir
from maquette.monitoring.labels import LABEL
from maquette.monitoring.live_metrics import quality_scores
from maquette.monitoring.reference import (
    SEED,
    reference_frame,
    reference_period_rows,
    served_inputs,
    served_rows,
)
from maquette.window_spec import WindowSpec

# Kept importable from here: callers and tests used them before reference.py existed.
__all__ = [
    "SEED",
    "WindowReport",
    "load_index",
    "open_workspace",
    "reports_dir",
    "served_inputs",
    "window_reports",
    "windows_of",
]


@dataclass
class WindowReport:
    """What one Evidently report found, for the index page and the alerts."""

    model: str
    version: str
    window_start: str
    window_end: str
    rows: int
    labelled: int
    sampled_rows: int
    reference_rows: int
    drift_share: float  # Maquette's: drifted_features / compared features
    drifted_features: list[str]
    feature_drift: dict[str, float]  # p-value (small windows) or distance (large ones)
    drift_method: dict[str, str]  # Evidently stat test name per column
    prediction_drift: float | None
    quality: dict[str, float] = field(default_factory=dict)
    html: str = ""
    quality_html: str = ""
    note: str = ""
    workspace_runs: list[str] = field(default_factory=list)  # Evidently run ids, replaced on redo
    window: str = ""  # canonical window name: weekly, 500-rows, ...
    complete: bool = True  # only complete windows are judged
    enough: bool = True  # rows >= the model's thresholds.min_rows
    reference: str = "training"  # kind actually used (a fallback says so in reference_note)
    reference_note: str = ""  # which rows: period, served and split rows, or why the fallback
    tests: dict[str, str] = field(default_factory=dict)  # per column, the test in words
    corrected: bool = False  # Benjamini-Hochberg over the report's p-values
    adjusted_p: dict[str, float] = field(default_factory=dict)  # BH-adjusted p-values
    fingerprint: str = ""  # settings and reference rows the report depended on


@dataclass
class Window:
    """One window of one version's scored predictions."""

    start: pd.Timestamp
    end: pd.Timestamp
    complete: bool
    rows: pd.DataFrame


def windows_of(frame: pd.DataFrame, spec: WindowSpec, as_of: datetime) -> list[Window]:
    """The windows of scored-prediction rows (one version's): time buckets or N-row counts.

    A time window is complete once its end is at or before `as_of`; a count window once it
    holds its N rows (`rows`) or N labelled rows (`labelled`, the unlabelled rows between
    belonging to the window of the next labelled one). Count windows run from their first to
    their last request time.
    """
    if frame.empty:
        return []
    times = frame["request_time"]
    if spec.is_time:
        starts = _window_starts(times, spec)
        out = []
        for start, rows in frame.groupby(starts, sort=True):
            stamp = pd.Timestamp(start)
            end = pd.Timestamp(spec.end_of(stamp.to_pydatetime()))
            out.append(Window(stamp, end, end <= pd.Timestamp(as_of), rows))
        return out
    assert spec.count is not None
    ordered = frame.sort_values(["request_time", "prediction_id"], kind="stable")
    if spec.counts == "labelled":
        known = ordered[LABEL].notna().to_numpy()
        index = (np.cumsum(known) - known) // spec.count
        counted = pd.Series(known, index=ordered.index)
    else:
        index = np.arange(len(ordered)) // spec.count
        counted = pd.Series(True, index=ordered.index)
    out = []
    for _, rows in ordered.groupby(index, sort=True):
        full = int(counted.loc[rows.index].sum()) >= spec.count
        span = rows["request_time"]
        out.append(Window(pd.Timestamp(span.min()), pd.Timestamp(span.max()), full, rows))
    return out


def _window_starts(times: pd.Series, spec: WindowSpec) -> pd.Series:
    utc = times.dt.tz_convert("UTC")
    if spec.calendar == "month":
        naive = utc.dt.tz_localize(None)
        return naive.dt.to_period("M").dt.start_time.dt.tz_localize("UTC")
    assert spec.every is not None and spec.origin is not None
    origin, every = pd.Timestamp(spec.origin), pd.Timedelta(spec.every)
    return origin + ((utc - origin) // every) * every


def window_report(
    settings: Settings,
    version: registry.ModelVersion,
    window: Window,
    spec: WindowSpec,
    reference: tuple[pd.DataFrame, str, str],
    workspace: Any | None,
    replaces: list[str],
) -> WindowReport:
    """Run Evidently on one window of served rows (scored-predictions rows, labels when known)."""
    record = version.record
    features = list(record.feature_names)
    rows, labelled = len(window.rows), int(window.rows[LABEL].notna().sum())
    sample = window.rows
    if rows > settings.monitoring.report_rows:
        sample = sample.sample(settings.monitoring.report_rows, random_state=SEED)
    current = served_rows(sample, features)
    frame, kind, ref_note = reference
    numerical, categorical = runs.column_kinds(record)
    pooled: list[str] = []
    if len(sample) < settings.monitoring.drift_large_sample:
        current, frame, pooled = pool_rare(current, frame, categorical)
    one_class = record.task == "binary" and sample[LABEL].dropna().nunique() < 2
    # Evidently cannot test a column with no values on one side; say so instead.
    empty = [f for f in features if current[f].isna().all() or frame[f].isna().all()]
    typed = [runs.comparable(record, f, with_label=False) for f in (current, frame)]
    tests = _tests(settings, typed, numerical, categorical, empty, len(sample))
    notes = _window_notes(rows, len(sample), labelled, one_class, empty, kind, ref_note)
    notes.append(f"tests: {tests.why}")
    if pooled:
        notes.append(f"categories expected < 5 times pooled for chi-square: {', '.join(pooled)}")
    metadata = {
        "model": version.name,
        "version": version.version,
        "window": spec.name,
        "reference": kind,
        "reference_note": ref_note,
        "tests": tests.why,
        "note": "; ".join(notes),
    }
    start = window.start.to_pydatetime()
    snapshot, quality = runs.evidently_runs(
        version, current, frame, tests, labelled > 0 and not one_class, metadata, start
    )
    scores, methods, prediction = runs.drift_scores(snapshot)
    drifted = tests.drifted(scores, settings.monitoring.drift_fdr)
    found = WindowReport(
        version.name,
        version.version,
        window.start.isoformat(),
        window.end.isoformat(),
        rows,
        labelled,
        len(sample),
        len(frame),
        len(drifted) / len(tests.methods) if tests.methods else 0.0,
        drifted,
        scores,
        methods,
        prediction,
        note="; ".join(notes),
        window=spec.name,
        complete=window.complete,
        reference=kind,
        reference_note=ref_note,
        tests=described_tests(tests.methods),
        corrected=tests.corrected,
        adjusted_p=tests.adjusted,
    )
    if labelled:
        known = sample[sample[LABEL].notna()]
        found.quality = quality_scores(
            record, known[LABEL].to_numpy(float), known["prediction"].to_numpy(float)
        )
    found.html, found.quality_html = runs.save_reports(
        settings, version, _stem(version, spec, window), (snapshot, quality), notes
    )
    if workspace is not None:
        found.workspace_runs = runs.add_to_workspace(
            workspace, version, (snapshot, quality), replaces
        )
    return found


def _tests(
    settings: Settings,
    frames: list[pd.DataFrame],
    numerical: list[str],
    categorical: list[str],
    empty: list[str],
    rows: int,
) -> ColumnTests:
    current, reference = frames
    monitoring = settings.monitoring
    return plan_tests(
        current,
        reference,
        [c for c in numerical if c not in empty],
        [c for c in categorical if c not in empty],
        rows,
        monitoring.drift_large_sample,
        monitoring.drift_fdr,
        monitoring.drift_distance_threshold,
    )


def _stem(version: registry.ModelVersion, spec: WindowSpec, window: Window) -> str:
    return f"{version.name}_{version.version}_{spec.name}_{window.start:%Y-%m-%dT%H%M%S}"


def _window_notes(
    rows: int,
    sampled: int,
    labelled: int,
    one_class: bool,
    empty: list[str],
    kind: str,
    ref_note: str,
) -> list[str]:
    """What a reader of the report must know: sampling, reference, labels, untested columns."""
    notes = []
    if sampled < rows:
        notes.append(f"current window sampled: {sampled:,} of {rows:,} rows")
    notes.append(f"reference ({kind}): {ref_note}")
    if not labelled:
        notes.append("no labels yet in this window: quality not computed")
    if labelled and one_class:
        notes.append("labels of a single class in this window: classification quality not computed")
    if empty:
        notes.append(f"no values to compare, drift not tested: {', '.join(empty)}")
    return notes


def _not_enough(
    settings: Settings,
    version: registry.ModelVersion,
    spec: WindowSpec,
    window: Window,
    min_rows: int,
    kind: str,
    why: str | None = None,
) -> WindowReport:
    """A window too small to judge: listed, with a one-line page saying so, never tested."""
    rows = len(window.rows)
    note = (
        "not enough data: "
        + (why or f"{rows:,} predictions, fewer than min_rows {min_rows:,}")
        + "; not tested"
    )
    folder = reports_dir(settings, version.name)
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / f"{_stem(version, spec, window)}_drift.html"
    page.write_text(
        f"<!doctype html><meta charset='utf-8'><title>{version.tag} {spec.name}</title>"
        f"<p>{html.escape(version.tag)}, {spec.name} window from {window.start:%Y-%m-%d %H:%M} "
        f"UTC: {html.escape(note)}.</p>"
    )
    return WindowReport(
        version.name,
        version.version,
        window.start.isoformat(),
        window.end.isoformat(),
        rows,
        int(window.rows[LABEL].notna().sum()),
        0,
        0,
        0.0,
        [],
        {},
        {},
        None,
        html=str(page),
        note=note,
        window=spec.name,
        complete=window.complete,
        enough=False,
        reference=kind,
    )


def _index_path(settings: Settings, name: str) -> Path:
    return reports_dir(settings, name) / "reports.json"


def load_index(settings: Settings, name: str) -> list[WindowReport]:
    path = _index_path(settings, name)
    if not path.is_file():
        return []
    known = set(WindowReport.__dataclass_fields__)
    return [
        WindowReport(**{k: v for k, v in entry.items() if k in known})
        for entry in json.loads(path.read_text())
    ]


def _fingerprint(settings: Settings, kind: str, min_rows: int, served_in_period: int) -> str:
    """What else than the window's rows a report depends on: a change means a redo."""
    m = settings.monitoring
    knobs = [
        kind,
        served_in_period,
        min_rows,
        m.reference_trailing,
        m.reference_season,
        m.reference_min_rows,
        m.reference_rows,
        m.report_rows,
        m.drift_large_sample,
        m.drift_fdr,
        m.drift_distance_threshold,
    ]
    return "|".join(map(str, knobs))


# An open window's report is redone once its rows have grown by this factor (and when it ends).
OPEN_REDO_GROWTH = 1.25
# Drift windows a pass looks at per version, the newest: request times spread over centuries
# must not make thousands of Evidently reports (~3.5 MB each). Older windows keep the report
# an earlier pass made, if any. Three years of weekly windows.
MAX_WINDOWS_PER_PASS = 156

log = logging.getLogger("maquette.monitoring")


def window_reports(
    settings: Settings,
    name: str,
    scored: pa.Table,
    announce: Any = None,
    as_of: datetime | None = None,
) -> list[WindowReport]:
    """One report per (version, drift window) of the scored predictions; unchanged ones kept."""
    as_of = as_of or datetime.now(UTC)
    watch = settings.monitoring_of(name)
    spec, kind, min_rows = watch.drift_window, watch.reference, watch.thresholds.min_rows
    frame = scored.to_pandas()
    frame = frame[frame["request_time"] < pd.Timestamp(as_of)]
    known = {(r.version, r.window, r.window_start): r for r in load_index(settings, name)}
    workspace: Any | None = None
    out: list[WindowReport] = []
    for version_id, rows in frame.groupby("version"):
        version = registry.resolve(settings, f"{name}:{version_id}")
        began = pd.Timestamp(rows["request_time"].min())
        windows = windows_of(rows, spec, as_of)
        for window in windows[:-MAX_WINDOWS_PER_PASS]:
            previous = known.get((str(version_id), spec.name, window.start.isoformat()))
            if previous is not None:
                out.append(replace(previous, complete=window.complete))
        if len(windows) > MAX_WINDOWS_PER_PASS and announce:
            announce(
                f"{version.tag}: {len(windows):,} {spec.name} drift windows; reports for the "
                f"newest {MAX_WINDOWS_PER_PASS} only"
            )
        for window in windows[-MAX_WINDOWS_PER_PASS:]:
            start, end = window.start.to_pydatetime(), window.end.to_pydatetime()
            if len(window.rows) < min_rows:
                out.append(_not_enough(settings, version, spec, window, min_rows, kind))
                continue
            if spec.is_time and began > window.start + (window.end - window.start) / 2:
                # Most of the window passed before serving began: its rows are a few days of a
                # week (a Sunday's flights against four whole weeks), which every test flags.
                why = (
                    f"{version.tag} began serving on {began:%Y-%m-%d %H:%M} UTC, after the "
                    f"middle of this {spec.name} window"
                )
                out.append(_not_enough(settings, version, spec, window, min_rows, kind, why))
                continue
            fingerprint = _fingerprint(
                settings, kind, min_rows, reference_period_rows(settings, kind, start, end, frame)
            )
            previous = known.get((str(version_id), spec.name, window.start.isoformat()))
            if _still_valid(previous, window, fingerprint) or _open_and_recent(
                previous, window, fingerprint
            ):
                assert previous is not None
                out.append(replace(previous, complete=window.complete))
                continue
            reference = reference_frame(settings, version, kind, start, end, frame)
            if announce:
                announce(
                    f"{version.tag}: {spec.name} drift report from {window.start:%Y-%m-%d %H:%M}"
                )
            workspace = workspace if workspace is not None else open_workspace(settings)
            replaces = previous.workspace_runs if previous else []
            try:
                report = window_report(
                    settings, version, window, spec, reference, workspace, replaces
                )
            except Exception as exc:  # one window's failure is reported; the others go on
                log.exception("%s: the drift report from %s failed", version.tag, window.start)
                why = f"its drift report failed ({type(exc).__name__}: {exc})"
                out.append(_not_enough(settings, version, spec, window, min_rows, kind, why))
                continue
            report.fingerprint = fingerprint
            out.append(report)
    path = _index_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_whole(path, json.dumps([asdict(r) for r in out], indent=1, default=_json_default))
    return out


def _still_valid(previous: WindowReport | None, window: Window, fingerprint: str) -> bool:
    """A kept report: same rows, same labelled rows, same reference and settings, HTML there."""
    return (
        previous is not None
        and previous.enough
        and previous.rows == len(window.rows)
        and previous.labelled == int(window.rows[LABEL].notna().sum())
        and previous.fingerprint == fingerprint
        and Path(previous.html).is_file()
    )


def _open_and_recent(previous: WindowReport | None, window: Window, fingerprint: str) -> bool:
    """An open window's report is kept until its rows grow by a quarter: an open window is
    never judged, and an hourly pass would otherwise run Evidently on it every hour."""
    return (
        previous is not None
        and not window.complete
        and previous.enough
        and len(window.rows) < OPEN_REDO_GROWTH * previous.rows
        and previous.fingerprint == fingerprint
        and Path(previous.html).is_file()
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
