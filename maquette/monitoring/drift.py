"""Evidently reports of served models: feature drift, prediction drift and quality, per window.

For each report window (weekly by default) and served version, one Evidently report compares
what the model received in that window with the training reference recorded in the version
(its train split): data drift of every feature, drift of the prediction, and regression or
classification quality on the rows whose label is known. Each report is saved as
self-contained HTML under `reports/monitoring/NAME/` and as a snapshot in a local Evidently
workspace (`evidently ui --workspace .maquette/evidently`). Reports of windows whose rows did not
change since the last run are kept, not recomputed.

Large windows stay fast: the reference is a seeded sample of `monitoring.reference_rows`
training rows and a window is sampled down to `monitoring.report_rows`; a report says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from maquette import registry
from maquette.config import Settings
from maquette.data.sql import duckdb_connection
from maquette.monitoring.labels import LABEL
from maquette.monitoring.live_metrics import quality_scores
from maquette.training.model_types import LABEL as TRAINING_LABEL
from maquette.training.model_types import TrainedModel
from maquette.version_record import VersionRecord

PERIODS = {"daily": "D", "weekly": "W-SUN", "monthly": "M"}
SEED = 7


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
    drift_share: float
    drifted_features: list[str]
    feature_drift: dict[str, float]
    drift_method: dict[str, str]
    prediction_drift: float | None
    quality: dict[str, float] = field(default_factory=dict)
    html: str = ""
    quality_html: str = ""
    note: str = ""
    workspace_runs: list[str] = field(default_factory=list)  # Evidently run ids, replaced on redo


def reports_dir(settings: Settings, name: str) -> Path:
    return settings.path(settings.paths.reports) / "monitoring" / name


def served_inputs(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The feature values the model received: served values, missing or stale ones as null."""
    decoded = [json.loads(s) for s in frame["features"]]
    hidden = [
        set(m if m is not None else ()) | set(s if s is not None else ())
        for m, s in zip(frame["missing"], frame["stale"], strict=True)
    ]
    rows = [
        {f: (None if f in h else v.get(f)) for f in features}
        for v, h in zip(decoded, hidden, strict=True)
    ]
    return pd.DataFrame.from_records(rows, columns=features, index=frame.index)


def reference_frame(settings: Settings, version: registry.ModelVersion) -> pd.DataFrame:
    """A seeded sample of the version's training rows, with the version's predictions on them."""
    record = version.record
    path = record.data["train"].path
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"the training set of {version.tag} is gone ({path}); drift needs it as reference."
        )
    rows = settings.monitoring.reference_rows
    con = duckdb_connection()
    frame = con.sql(
        f"SELECT * FROM read_parquet('{path}') USING SAMPLE reservoir({rows} ROWS) "
        f"REPEATABLE ({SEED})"
    ).df()
    model = TrainedModel.load(version.path, record)
    frame["prediction"], _ = model.predict(frame)
    return frame.rename(columns={TRAINING_LABEL: LABEL})


def _window_starts(times: pd.Series, every: str) -> pd.Series:
    naive = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return naive.dt.to_period(PERIODS[every]).dt.start_time.dt.tz_localize("UTC")


def _drift_verdict(method: str, score: float, threshold: float) -> bool:
    # Statistical tests give p-values (drift when small); distances drift when large.
    return score < threshold if "p_value" in method else score >= threshold


def _datasets(record: VersionRecord, frames: list[pd.DataFrame], with_label: bool) -> list[Any]:
    """Evidently datasets of the served features and the prediction (and the label)."""
    # Lazy: Evidently takes seconds to import.
    from evidently import BinaryClassification, DataDefinition, Dataset, Regression

    features = list(record.feature_names)
    categorical = [f for f in features if f in record.categories]
    numerical = [f for f in features if f not in categorical]
    binary = record.task == "binary"
    kinds: dict[str, Any] = {}
    if with_label:
        kinds = (
            {"classification": [BinaryClassification(target=LABEL, prediction_probas="prediction")]}
            if binary
            else {"regression": [Regression(target=LABEL, prediction="prediction")]}
        )
    definition = DataDefinition(
        numerical_columns=[
            *numerical,
            "prediction",
            *([LABEL] if with_label and not binary else []),
        ],
        categorical_columns=categorical,
        **kinds,
    )
    columns = [*features, "prediction", *([LABEL] if with_label else [])]
    out = []
    for frame in frames:
        data = frame[columns].copy()
        for col in [*numerical, "prediction"]:
            # JSON-decoded served values arrive as objects (None for missing).
            data[col] = pd.to_numeric(data[col], errors="coerce").astype(float)
        for col in categorical:
            data[col] = data[col].astype("string")
        if with_label:
            data[LABEL] = data[LABEL].astype(int if binary else float)
        out.append(Dataset.from_pandas(data, data_definition=definition))
    return out


def window_report(
    settings: Settings,
    version: registry.ModelVersion,
    reference: pd.DataFrame,
    window: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp,
    workspace: Any | None,
    replaces: Sequence[str] = (),
) -> WindowReport:
    """Run Evidently on one window of served rows (scored-predictions rows, labels when known)."""
    record = version.record
    features = list(record.feature_names)
    rows, labelled = len(window), int(window[LABEL].notna().sum())
    if rows > settings.monitoring.report_rows:
        window = window.sample(settings.monitoring.report_rows, random_state=SEED)
    current = served_inputs(window, features)
    current["prediction"] = window["prediction"].to_numpy(float)
    current[LABEL] = window[LABEL].to_numpy(float)
    one_class = record.task == "binary" and window[LABEL].dropna().nunique() < 2
    # Evidently cannot test a column with no values on one side; say so instead.
    empty = [f for f in features if current[f].isna().all() or reference[f].isna().all()]
    notes = _window_notes(version, reference, rows, len(window), labelled, one_class, empty)
    compared = [f for f in features if f not in empty]
    snapshot, quality = _evidently_runs(
        version, current, reference, compared, labelled > 0 and not one_class, notes, start
    )
    found = WindowReport(
        version.name,
        version.version,
        start.isoformat(),
        end.isoformat(),
        rows,
        labelled,
        len(window),
        len(reference),
        0.0,
        [],
        {},
        {},
        None,
        note="; ".join(notes),
    )
    _read_drift(snapshot, found)
    if labelled:
        known = window[window[LABEL].notna()]
        found.quality = quality_scores(
            record, known[LABEL].to_numpy(float), known["prediction"].to_numpy(float)
        )
    _save_reports(settings, version, start, snapshot, quality, found)
    if workspace is not None:
        _add_to_workspace(workspace, version, (snapshot, quality), found, replaces)
    return found


def _window_notes(
    version: registry.ModelVersion,
    reference: pd.DataFrame,
    rows: int,
    sampled: int,
    labelled: int,
    one_class: bool,
    empty: list[str],
) -> list[str]:
    """What a reader of the report must know: sampling, missing labels, untested columns."""
    notes = []
    if sampled < rows:
        notes.append(f"current window sampled: {sampled:,} of {rows:,} rows")
    notes.append(f"reference: {len(reference):,} sampled training rows of {version.tag}")
    if not labelled:
        notes.append("no labels yet in this window: quality not computed")
    if labelled and one_class:
        notes.append("labels of a single class in this window: classification quality not computed")
    if empty:
        notes.append(f"no values to compare, drift not tested: {', '.join(empty)}")
    return notes


def _evidently_runs(
    version: registry.ModelVersion,
    current: pd.DataFrame,
    reference: pd.DataFrame,
    compared: list[str],
    with_quality: bool,
    notes: list[str],
    start: pd.Timestamp,
) -> tuple[Any, Any | None]:
    """The drift snapshot of one window and, when its labels allow, the quality snapshot."""
    # Evidently takes seconds to import: loaded when a report is made, not with the package.
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import ClassificationPreset, DataDriftPreset, RegressionPreset

    record = version.record
    metadata = {"model": version.name, "version": version.version, "note": "; ".join(notes)}
    tags = [version.name, version.version]
    with warnings.catch_warnings():
        # Evidently warns about its own internal slices (a window with one class, a column
        # with no values yet); the report shows those cases.
        warnings.simplefilter("ignore")
        drift_data, reference_data = _datasets(record, [current, reference], with_label=False)
        snapshot = Report(
            [DataDriftPreset(columns=compared), ValueDrift(column="prediction")],
            metadata={**metadata, "report": "drift"},
            tags=[*tags, "drift"],
        ).run(drift_data, reference_data, timestamp=start.to_pydatetime())
        quality = None
        if with_quality:
            known = current[current[LABEL].notna()]
            preset = ClassificationPreset() if record.task == "binary" else RegressionPreset()
            quality = Report(
                [preset], metadata={**metadata, "report": "quality"}, tags=[*tags, "quality"]
            ).run(
                *_datasets(record, [known, reference], with_label=True),
                timestamp=start.to_pydatetime(),
            )
    return snapshot, quality


def _read_drift(snapshot: Any, found: WindowReport) -> None:
    """Copy the drift share, per-feature scores and prediction drift of a snapshot into `found`."""
    for metric in snapshot.dict()["metrics"]:
        config, value = metric["config"], metric["value"]
        kind = config.get("type", "")
        if kind.endswith("DriftedColumnsCount"):
            found.drift_share = float(value["share"])
        elif kind.endswith("ValueDrift"):
            score = float(value)
            column = config["column"]
            if column == "prediction":
                found.prediction_drift = score
                continue
            found.feature_drift[column] = score
            found.drift_method[column] = config["method"]
            if _drift_verdict(config["method"], score, config["threshold"]):
                found.drifted_features.append(column)


def _save_reports(
    settings: Settings,
    version: registry.ModelVersion,
    start: pd.Timestamp,
    snapshot: Any,
    quality: Any | None,
    found: WindowReport,
) -> None:
    """Write the window's reports as self-contained HTML and note where in `found`."""
    folder = reports_dir(settings, version.name)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{version.name}_{version.version}_{start:%Y-%m-%d}"
    snapshot.save_html(str(folder / f"{stem}_drift.html"))
    found.html = str(folder / f"{stem}_drift.html")
    if quality is not None:
        quality.save_html(str(folder / f"{stem}_quality.html"))
        found.quality_html = str(folder / f"{stem}_quality.html")


def _add_to_workspace(
    workspace: Any,
    version: registry.ModelVersion,
    runs: tuple[Any, Any | None],
    found: WindowReport,
    replaces: Sequence[str],
) -> None:
    """Add the window's runs to the Evidently workspace, replacing the window's earlier ones."""
    project = _workspace_project(workspace, version.name, version.record.task)
    for run in runs:
        if run is not None:
            added = workspace.add_run(project.id, run, include_data=False)
            found.workspace_runs.append(str(added.id))
    # The window's earlier runs go once the new ones are in: one run per report per window.
    for old in replaces:
        with contextlib.suppress(Exception):  # already gone (a workspace reset by hand)
            workspace.delete_run(project.id, old)


def open_workspace(settings: Settings) -> Any:
    # Lazy: Evidently takes seconds to import.
    from evidently.ui.workspace import Workspace

    return Workspace.create(str(settings.path(settings.monitoring.workspace)))


def _workspace_project(workspace: Any, name: str, task: str) -> Any:
    for project in workspace.search_project(f"maquette: {name}"):
        return project
    # Lazy: Evidently takes seconds to import.
    from evidently.sdk.panels import PanelMetric, line_plot_panel

    project = workspace.create_project(
        f"maquette: {name}", description=f"Drift and quality of {name}, per window."
    )
    # The dashboard `evidently ui` opens on: the reports' headline values over the windows.
    quality = ("RMSE", "RMSE") if task == "regression" else ("RocAuc", "ROC AUC")
    panels = [
        ("Share of drifted features", "DriftedColumnsCount", {"value_type": "share"}, "drift"),
        ("Prediction drift", "ValueDrift", {"column": "prediction"}, "drift"),
        (quality[1], quality[0], {}, "quality"),
    ]
    for title, metric, labels, tag in panels:
        project.dashboard.add_panel(
            line_plot_panel(
                title,
                [PanelMetric(legend=title, metric=metric, metric_labels=labels, tags=[tag])],
                size="half",
            ),
            tab="Monitoring",
        )
    return project


def _index_path(settings: Settings, name: str) -> Path:
    return reports_dir(settings, name) / "reports.json"


def load_index(settings: Settings, name: str) -> list[WindowReport]:
    path = _index_path(settings, name)
    if not path.is_file():
        return []
    return [WindowReport(**entry) for entry in json.loads(path.read_text())]


def window_reports(
    settings: Settings, name: str, scored: pa.Table, announce: Any = None
) -> list[WindowReport]:
    """One report per (version, report window) of the scored predictions; unchanged ones kept."""
    frame = scored.to_pandas()
    every = settings.monitoring.report_window
    frame["window_start"] = _window_starts(frame["request_time"], every)
    known = {(r.version, r.window_start): r for r in load_index(settings, name)}
    workspace = open_workspace(settings)
    out: list[WindowReport] = []
    for version_id, rows in frame.groupby("version"):
        version = registry.resolve(settings, f"{name}:{version_id}")
        reference: pd.DataFrame | None = None
        for start, window in rows.groupby("window_start"):
            previous = known.get((str(version_id), start.isoformat()))
            labelled = int(window[LABEL].notna().sum())
            if (
                previous
                and previous.rows == len(window)
                and previous.labelled == labelled
                and Path(previous.html).is_file()
            ):
                out.append(previous)
                continue
            if reference is None:
                reference = reference_frame(settings, version)
            end = (pd.Period(start.tz_localize(None), PERIODS[every]) + 1).start_time
            end = end.tz_localize("UTC")
            if announce:
                announce(f"{version.tag}: report for the window from {start:%Y-%m-%d}")
            replaces = previous.workspace_runs if previous else []
            out.append(
                window_report(settings, version, reference, window, start, end, workspace, replaces)
            )
    path = _index_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in out], indent=1, default=_json_default))
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
