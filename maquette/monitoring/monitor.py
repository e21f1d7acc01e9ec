"""Monitoring: is a served model still right? Michelangelo's last step, run as one pass.

`run` is the `monitor` flow's work: drain the prediction log, ingest the late labels, join them
to the logged predictions (`labels.py`), then per model
- live metrics per window, version and partition (`live_metrics.py`);
- Evidently drift and quality reports per report window (`drift.py`);
- training/serving skew on a sample (`skew.py`);
and, once, the freshness of every feature view in Redis (`freshness.py`). Thresholds from the
settings turn these into alerts (`alerts.py`). Everything lands in an index page,
`reports/monitoring/index.html`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from maquette.config import Settings
from maquette.errors import DataNotLoaded
from maquette.monitoring import alerts, drift, labels, skew
from maquette.monitoring.freshness import Freshness, freshness, freshness_alerts
from maquette.monitoring.index import write_monitoring_index
from maquette.monitoring.live_metrics import METRIC_COLUMNS, live_metrics
from maquette.serving import prediction_log as predictions


@dataclass
class ModelFindings:
    """What one pass found for one model."""

    name: str
    predictions: int
    labelled: int
    metrics: dict[str, pd.DataFrame]
    reports: list[drift.WindowReport]
    skew: list[skew.SkewReport]
    unknown_label_ids: int = 0


@dataclass
class MonitorRun:
    """What `maquette monitor run` did."""

    as_of: datetime
    drained: int
    models: dict[str, ModelFindings]
    skipped: dict[str, str]
    freshness: list[Freshness]
    new_alerts: list[alerts.Alert]
    webhook_error: str | None
    retrained: dict[str, str]
    index: Path
    workspace: Path
    all_alerts: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)


def _direct(label: str, fn: Any, *args: Any) -> Any:
    return fn(*args)


def monitor_model(
    settings: Settings,
    name: str,
    as_of: datetime | None = None,
    announce: Callable[[str], None] = print,
) -> ModelFindings:
    """Labels (known by `as_of`), join, metrics per window, drift and quality reports, skew."""
    ingested = labels.ingest_labels(settings, name)
    narrow = labels.join_labels(settings, name, as_of, METRIC_COLUMNS)
    if narrow.num_rows == 0:
        raise DataNotLoaded(
            f"no logged predictions of {name!r} yet.",
            f"Serve {name} (POST /predict) and drain the log (`maquette predictions drain`).",
        )
    labelled = narrow.num_rows - narrow["label"].null_count
    announce(f"{name}: {narrow.num_rows:,} predictions, {labelled:,} with labels")
    series: dict[str, pd.DataFrame] = {
        w: live_metrics(settings, name, narrow, w) for w in settings.monitoring.windows
    }
    scored = pq.read_table(labels.scored_path(settings, name))
    reports = drift.window_reports(settings, name, scored, announce)
    skews = skew.skew_report(settings, name, scored)
    return ModelFindings(
        name, narrow.num_rows, labelled, series, reports, skews, ingested.unknown_ids
    )


def run(
    settings: Settings,
    models: list[str] | None = None,
    as_of: datetime | None = None,
    drain: bool = True,
    announce: Callable[[str], None] = print,
    step: Any = _direct,
) -> MonitorRun:
    """One monitoring pass (the `monitor` flow passes a `step` that makes each part a task)."""
    began = time.perf_counter()
    for name in models or []:
        settings.model_spec(name)  # unknown names fail before any work
    drained = step("drain", predictions.drain, settings).entries if drain else 0
    results, skipped, found = _monitor_models(settings, models, as_of, announce, step)
    views = step("freshness", freshness, settings, as_of)
    found += freshness_alerts(views)
    new = alerts.record(settings, found)
    webhook_error = alerts.send_webhook(settings, new)
    retrained = _retrain_on_alerts(settings, new, announce, step)
    outcome = MonitorRun(
        as_of or datetime.now(UTC),
        drained,
        results,
        skipped,
        views,
        new,
        webhook_error,
        retrained,
        index_path(settings),
        settings.path(settings.monitoring.workspace),
        alerts.recorded(settings),
    )
    write_monitoring_index(outcome)
    outcome.seconds["total"] = time.perf_counter() - began
    return outcome


def _monitor_models(
    settings: Settings,
    models: list[str] | None,
    as_of: datetime | None,
    announce: Callable[[str], None],
    step: Any,
) -> tuple[dict[str, ModelFindings], dict[str, str], list[alerts.Alert]]:
    """Findings per monitored model, the models skipped (and why), and the alerts found."""
    wanted = models or [n for n, s in settings.models.items() if s.labels is not None]
    logged = _logged_models(settings)
    results: dict[str, ModelFindings] = {}
    skipped: dict[str, str] = {}
    found: list[alerts.Alert] = []
    for name in wanted:
        if name not in logged:
            if models:
                raise DataNotLoaded(
                    f"no logged predictions of {name!r} yet.",
                    f"Serve {name} (POST /predict), then run `maquette predictions drain`.",
                )
            skipped[name] = "no logged predictions yet"
            continue
        result = step(f"monitor-{name}", monitor_model, settings, name, as_of, announce)
        results[name] = result
        primary = result.metrics[settings.monitoring.windows[0]]
        found += alerts.metric_alerts(settings, name, primary)
        found += alerts.drift_alerts(settings, name, result.reports)
    if not results and not models:
        raise DataNotLoaded(
            "no logged predictions of any model yet.",
            "Serve predictions (`maquette serve`, POST /predict), then run this again.",
        )
    return results, skipped, found


def _retrain_on_alerts(
    settings: Settings, new: list[alerts.Alert], announce: Callable[[str], None], step: Any
) -> dict[str, str]:
    """Per model whose new accuracy or drift alert asks for it: what retraining did."""
    retrained: dict[str, str] = {}
    for name in sorted({a.model for a in new if a.model and a.kind in alerts.ACCURACY_KINDS}):
        if settings.model_spec(name).monitoring.retrain_on_alert:
            announce(f"{name}: alert raised, training a candidate version")
            retrained[name] = step(f"retrain-{name}", alerts.retrain, settings, name)
    return retrained


def _logged_models(settings: Settings) -> set[str]:
    folder = settings.path(settings.predictions.folder)
    return {p.name.removeprefix("model=") for p in folder.glob("date=*/model=*")}


def index_path(settings: Settings) -> Path:
    return settings.path(settings.paths.reports) / "monitoring" / "index.html"
