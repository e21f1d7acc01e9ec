"""Evidently runs of one drift window: the drift and quality snapshots, their HTML, the workspace.

`drift.py` decides which windows to report and with which reference; this module turns one
window into Evidently reports: data drift per feature with the tests `drift_tests` chose,
drift of the prediction, and regression or classification quality on the labelled rows. The
HTML is written under `reports/monitoring/NAME/`, the snapshots go to the local Evidently
workspace (`evidently ui --workspace .maquette/evidently`) with a dashboard per model.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import warnings
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from maquette import registry
from maquette.config import Settings
from maquette.monitoring.drift_tests import ColumnTests
from maquette.monitoring.labels import LABEL
from maquette.version_record import VersionRecord


def reports_dir(settings: Settings, name: str) -> Path:
    return settings.path(settings.paths.reports) / "monitoring" / name


def column_kinds(record: VersionRecord) -> tuple[list[str], list[str]]:
    """The version's (numerical, categorical) features."""
    features = list(record.feature_names)
    categorical = [f for f in features if f in record.categories]
    return [f for f in features if f not in categorical], categorical


def comparable(record: VersionRecord, frame: pd.DataFrame, with_label: bool) -> pd.DataFrame:
    """Features, prediction (and label) typed as Evidently compares them."""
    numerical, categorical = column_kinds(record)
    columns = [*numerical, *categorical, "prediction", *([LABEL] if with_label else [])]
    data = frame[columns].copy()
    for col in [*numerical, "prediction"]:
        # JSON-decoded served values arrive as objects (None for missing).
        data[col] = pd.to_numeric(data[col], errors="coerce").astype(float)
    for col in categorical:
        data[col] = data[col].astype("string")
    if with_label:
        data[LABEL] = data[LABEL].astype(int if record.task == "binary" else float)
    return data


def _datasets(record: VersionRecord, frames: list[pd.DataFrame], with_label: bool) -> list[Any]:
    """Evidently datasets of the served features and the prediction (and the label)."""
    # Lazy: Evidently takes seconds to import.
    from evidently import BinaryClassification, DataDefinition, Dataset, Regression

    numerical, categorical = column_kinds(record)
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
    return [
        Dataset.from_pandas(comparable(record, frame, with_label), data_definition=definition)
        for frame in frames
    ]


# Columns whose per-column drift chart nobody sees. DataDriftPreset renders its own drift table
# (with a chart per column) and drops the charts of the ValueDrift metrics it runs, which
# Evidently draws anyway: a third of a drift report's time, and of its snapshot's size.
_UNSHOWN_CHARTS: ContextVar[frozenset[str]] = ContextVar(
    "unshown_drift_charts", default=frozenset()
)


@contextlib.contextmanager
def _without_unshown_charts(columns: Sequence[str]) -> Iterator[None]:
    """Within: ValueDrift of these columns computes its score, not its (dropped) chart."""
    from evidently.metrics.column_statistics import ValueDriftCalculation

    if not getattr(ValueDriftCalculation, "_maquette_skips_unshown", False):
        draw = ValueDriftCalculation._render

        def render(self: Any, result: Any, options: Any, color_options: Any) -> Any:
            if self.metric.column in _UNSHOWN_CHARTS.get():
                return []
            return draw(self, result, options, color_options)

        ValueDriftCalculation._render = render
        ValueDriftCalculation._maquette_skips_unshown = True
    token = _UNSHOWN_CHARTS.set(frozenset(columns))
    try:
        yield
    finally:
        _UNSHOWN_CHARTS.reset(token)


def evidently_runs(
    version: registry.ModelVersion,
    current: pd.DataFrame,
    reference: pd.DataFrame,
    tests: ColumnTests,
    with_quality: bool,
    metadata: dict[str, str],
    start: datetime,
) -> tuple[Any, Any | None]:
    """The drift snapshot of one window and, when its labels allow, the quality snapshot."""
    # Evidently takes seconds to import: loaded when a report is made, not with the package.
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import ClassificationPreset, DataDriftPreset, RegressionPreset

    record = version.record
    tags = [version.name, version.version]
    compared = list(tests.methods)
    # The prediction is one more numerical column: the same family of test as the features.
    prediction_method = "ks" if tests.corrected else "wasserstein"
    with warnings.catch_warnings():
        # Evidently warns about its own internal slices (a window with one class, a column
        # with no values yet); the report shows those cases.
        warnings.simplefilter("ignore")
        drift_data, reference_data = _datasets(record, [current, reference], with_label=False)
        with _without_unshown_charts(compared):
            snapshot = Report(
                [
                    DataDriftPreset(
                        columns=compared,
                        per_column_method=dict(tests.methods),
                        per_column_threshold=dict(tests.thresholds),
                    ),
                    ValueDrift(column="prediction", method=prediction_method),
                ],
                metadata={**metadata, "report": "drift"},
                tags=[*tags, "drift"],
            ).run(drift_data, reference_data, timestamp=start)
        quality = None
        if with_quality:
            known = current[current[LABEL].notna()]
            labelled = reference[reference[LABEL].notna()]
            preset = ClassificationPreset() if record.task == "binary" else RegressionPreset()
            datasets = _datasets(record, [known, labelled], with_label=True)
            quality = Report(
                [preset], metadata={**metadata, "report": "quality"}, tags=[*tags, "quality"]
            ).run(datasets[0], datasets[1] if len(labelled) else None, timestamp=start)
    return snapshot, quality


def drift_scores(snapshot: Any) -> tuple[dict[str, float], dict[str, str], float | None]:
    """Per feature score and method of a drift snapshot, and the prediction's drift score."""
    scores: dict[str, float] = {}
    methods: dict[str, str] = {}
    prediction: float | None = None
    for metric in snapshot.dict()["metrics"]:
        config, value = metric["config"], metric["value"]
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        if config["column"] == "prediction":
            prediction = float(value)
            continue
        scores[config["column"]] = float(value)
        methods[config["column"]] = str(config["method"])
    return scores, methods, prediction


def save_reports(
    settings: Settings,
    version: registry.ModelVersion,
    stem: str,
    snapshots: tuple[Any, Any | None],
    notes: list[str],
) -> tuple[str, str]:
    """Write the window's reports as self-contained HTML: (drift file, quality file or "").

    Evidently keeps a report's metadata in its snapshot, not in the HTML: the notes (reference,
    tests, sampling) are written at the top of each page, so a reader of the file sees them.
    """
    folder = reports_dir(settings, version.name)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run, kind in zip(snapshots, ("drift", "quality"), strict=True):
        if run is None:
            written.append("")
            continue
        path = folder / f"{stem}_{kind}.html"
        run.save_html(str(path))
        _add_notes(path, f"{version.tag}, {kind}", notes)
        written.append(str(path))
    return written[0], written[1]


def _add_notes(path: Path, title: str, notes: list[str]) -> None:
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    header = (
        '<section id="maquette-notes" style="font-family:sans-serif;margin:1em">'
        f"<h3>{html.escape(title)}</h3><ul>{items}</ul></section>"
    )
    page = path.read_text()
    path.write_text(page.replace("<body>", "<body>" + header, 1))


def add_to_workspace(
    workspace: Any,
    version: registry.ModelVersion,
    runs: tuple[Any, Any | None],
    replaces: Sequence[str],
) -> list[str]:
    """Add the window's runs to the Evidently workspace, replacing the window's earlier ones."""
    project = _workspace_project(workspace, version.name, version.record.task)
    added_ids = []
    for run in runs:
        if run is not None:
            added = workspace.add_run(project.id, run, include_data=False)
            added_ids.append(str(added.id))
    # The window's earlier runs go once the new ones are in: one run per report per window.
    for old in replaces:
        with contextlib.suppress(Exception):  # already gone (a workspace reset by hand)
            workspace.delete_run(project.id, old)
    return added_ids


def open_workspace(settings: Settings) -> Any:
    # Lazy: Evidently takes seconds to import.
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(settings.path(settings.monitoring.workspace)))
    workspace.state.write_snapshot = functools.partial(write_snapshot, workspace.state)
    return workspace


def write_snapshot(state: Any, project_id: Any, snapshot_id: Any, snapshot: Any) -> None:
    """Evidently's `LocalState.write_snapshot`, the file's text encoded in one call.

    Evidently's `json.dump` streams through Python's pure encoder, a write per token (0.2 s
    per snapshot, a tenth of a drift window); `json.dumps` uses the C encoder and gives the
    same text (`tests/test_drift_report_charts.py` compares the files)."""
    from evidently.legacy.utils.numpy_encoder import NumpyEncoder

    state.location.makedirs(state._snapshot_dir(project_id))
    text = json.dumps(snapshot.dict(), cls=NumpyEncoder)
    with state.location.open(state._snapshot_path(project_id, snapshot_id), "w") as f:
        f.write(text)


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
