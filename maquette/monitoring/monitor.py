"""Monitoring: is a served model still right? Michelangelo's last step, run as one pass.

`run` is the `monitor` flow's work: drain the prediction log, ingest the late labels, join them
to the logged predictions (`labels.py`), then per model
- live metrics per window, version and partition, and missing features per feature, in its
  alert window (`live_metrics.py`);
- Evidently drift and quality reports per drift window (`drift.py`);
- training/serving skew on a sample of each alert window (`skew.py`);
and, once, the freshness of every feature view in Redis (`freshness.py`). Every complete window
becomes a verdict (`verdicts.py`), verdicts move incidents (`incidents.py`: opened, resolved,
webhook), and an opened accuracy or drift incident may retrain (`alerts.py`). Everything lands
in an index page, `reports/monitoring/index.html`. A pass judges the world as of `as_of`
(default now): a replay runs passes at its simulated times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from maquette.config import Settings
from maquette.data.shared_files import exclusive, lock_path
from maquette.errors import DataNotLoaded
from maquette.monitoring import alerts, drift, incidents, labels, missing_baseline, skew
from maquette.monitoring import verdicts as judge
from maquette.monitoring.freshness import Freshness, freshness
from maquette.monitoring.incidents import Incident
from maquette.monitoring.index import write_monitoring_index
from maquette.monitoring.live_metrics import METRIC_COLUMNS, feature_missing, live_metrics
from maquette.monitoring.verdicts import Verdict
from maquette.serving import prediction_log as predictions
from maquette.window_spec import parse_window

log = logging.getLogger("maquette.monitoring")


@dataclass
class ModelFindings:
    """What one pass found for one model."""

    name: str
    predictions: int
    labelled: int
    metrics: dict[str, pd.DataFrame]  # window name -> live metrics (the alert window's too)
    reports: list[drift.WindowReport]
    skew: list[skew.SkewWindow]
    unknown_label_ids: int = 0
    alert_window: str = "daily"
    missing: pd.DataFrame = field(default_factory=pd.DataFrame)  # per window and feature
    # The split rows' windows before serving: what the first served windows' missing shares
    # are compared with.
    missing_history: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Logged predictions left out: their request time (the client's as_of) is outside
    # labels.monitored_period (year 1, year 9999, centuries before the training data).
    ignored_requests: int = 0


@dataclass
class MonitorRun:
    """What `maquette monitor run` did."""

    as_of: datetime
    drained: int
    models: dict[str, ModelFindings]
    skipped: dict[str, str]
    freshness: list[Freshness]
    incidents_opened: list[Incident]
    incidents_resolved: list[Incident]
    open_incidents: list[Incident]
    webhook_error: str | None
    retrained: dict[str, alerts.Retraining]
    index: Path
    workspace: Path
    incidents: list[Incident] = field(default_factory=list)  # every recorded one, oldest first
    verdicts: list[Verdict] = field(default_factory=list)  # this pass's judged windows
    seconds: dict[str, float] = field(default_factory=dict)


def _direct(label: str, fn: Any, *args: Any) -> Any:
    return fn(*args)


def monitor_model(
    settings: Settings,
    name: str,
    as_of: datetime | None = None,
    announce: Callable[[str], None] = print,
) -> ModelFindings:
    """Labels (known by `as_of`), join, metrics per window, missing features, drift, skew."""
    ingested = labels.ingest_labels(settings, name)
    ignored = labels.ignored_requests(settings, name)
    if ignored:
        first, last = labels.monitored_period(settings, name)
        announce(
            f"{name}: {ignored:,} logged predictions left out, their request time (as_of) "
            f"outside {first:%Y-%m-%d} .. {last:%Y-%m-%d %H:%M} UTC"
        )
    narrow = labels.join_labels(settings, name, as_of, METRIC_COLUMNS)
    if narrow.num_rows == 0:
        raise DataNotLoaded(
            f"no logged predictions of {name!r} yet.",
            f"Serve {name} (POST /predict) and drain the log (`maquette predictions drain`).",
        )
    labelled = narrow.num_rows - narrow["label"].null_count
    announce(f"{name}: {narrow.num_rows:,} predictions, {labelled:,} with labels")
    window = settings.monitoring_of(name).alert_window
    kept = [window] + [parse_window(w) for w in settings.monitoring.windows]
    series: dict[str, pd.DataFrame] = {}
    for spec in kept:
        if spec.name not in series:
            series[spec.name] = live_metrics(settings, name, narrow, spec, as_of=as_of)
    scored = pq.read_table(labels.scored_path(settings, name))
    # The served values too: a feature served as null (a broken pipeline) counts as missing.
    missing = feature_missing(
        settings, name, scored.select([*METRIC_COLUMNS, "features"]), window, as_of=as_of
    )
    reports = drift.window_reports(settings, name, scored, announce, as_of=as_of)
    skews = skew.skew_windows(settings, name, scored, window, as_of=as_of)
    return ModelFindings(
        name,
        narrow.num_rows,
        labelled,
        series,
        reports,
        skews,
        ingested.unknown_ids,
        window.name,
        missing,
        missing_baseline.split_history(settings, name, missing),
        ignored,
    )


def model_verdicts(settings: Settings, found: ModelFindings, as_of: datetime) -> list[Verdict]:
    """Every complete window of one model's findings, judged."""
    name = found.name
    return [
        *judge.accuracy_verdicts(settings, name, found.metrics[found.alert_window], as_of),
        *judge.missing_verdicts(settings, name, found.missing, found.missing_history),
        *judge.missing_share_verdicts(settings, name, found.metrics[found.alert_window]),
        *judge.drift_verdicts(settings, name, found.reports),
        *judge.skew_verdicts(settings, name, found.skew),
    ]


def run(
    settings: Settings,
    models: list[str] | None = None,
    as_of: datetime | None = None,
    drain: bool = True,
    announce: Callable[[str], None] = print,
    step: Any = _direct,
) -> MonitorRun:
    """One monitoring pass (the `monitor` flow passes a `step` that makes each part a task).

    One pass at a time per project: two at once (the schedule and a user) would both open the
    same incident, call the webhook twice and start two retrains; the second waits."""
    with exclusive(lock_path(settings, "monitoring-pass")):
        return _run(settings, models, as_of, drain, announce, step)


def _run(
    settings: Settings,
    models: list[str] | None,
    as_of: datetime | None,
    drain: bool,
    announce: Callable[[str], None],
    step: Any,
) -> MonitorRun:
    began = time.perf_counter()
    when = as_of or datetime.now(UTC)  # one instant for every part of the pass
    if when.tzinfo is None:  # a naive time is UTC, as everywhere in Maquette
        when = when.replace(tzinfo=UTC)
    for name in models or []:
        settings.model_spec(name)  # unknown names fail before any work
    drained = 0
    if drain:
        moved = step("drain", predictions.drain, settings)
        drained = moved.entries
        if moved.busy:  # judged on what was drained before: said, never silent
            announce(moved.busy)
    results, skipped = _monitor_models(settings, models, when, announce, step)
    views = step("freshness", freshness, settings, when)
    found: list[Verdict] = []
    for name, result in results.items():
        try:
            found += model_verdicts(settings, result, when)
        except Exception as exc:  # one model's problem never hides the others' incidents
            if models:
                raise
            log.exception("monitoring %s: its windows could not be judged", name)
            skipped[name] = f"its windows could not be judged: {exc}"
    found += judge.freshness_verdicts(views, when)
    changes = step("incidents", incidents.update, settings, found, when)
    webhook_error = step("webhook", incidents.notify, settings)
    # An incident opened and resolved within this pass (history judged at once) is over.
    still_open = [i for i in changes.opened if i.status == "open"]
    retrained = _retrain_on_incidents(settings, still_open, announce, step)
    if retrained:  # each incident says what it started (the console links to it)
        why = [i for i in still_open if i.kind in alerts.RETRAIN_KINDS]
        incidents.record_retraining(settings, why, retrained, when)
    outcome = MonitorRun(
        when,
        drained,
        results,
        skipped,
        views,
        changes.opened,
        changes.resolved,
        changes.open,
        webhook_error,
        retrained,
        index_path(settings),
        settings.path(settings.monitoring.workspace),
        incidents.load(settings),
        found,
    )
    write_monitoring_index(outcome)
    outcome.seconds["total"] = time.perf_counter() - began
    return outcome


def _monitor_models(
    settings: Settings,
    models: list[str] | None,
    as_of: datetime,
    announce: Callable[[str], None],
    step: Any,
) -> tuple[dict[str, ModelFindings], dict[str, str]]:
    """Findings per monitored model, and the models skipped (and why)."""
    wanted = models or [n for n, s in settings.models.items() if s.labels is not None]
    logged = _logged_models(settings)
    results: dict[str, ModelFindings] = {}
    skipped: dict[str, str] = {}
    for name in wanted:
        if name not in logged:
            if models:
                raise DataNotLoaded(
                    f"no logged predictions of {name!r} yet.",
                    f"Serve {name} (POST /predict), then run `maquette predictions drain`.",
                )
            skipped[name] = "no logged predictions yet"
            continue
        try:
            results[name] = step(f"monitor-{name}", monitor_model, settings, name, as_of, announce)
        except Exception as exc:  # one model's problem never stops the others or freshness
            if models:
                raise
            log.exception("monitoring %s failed", name)
            skipped[name] = f"monitoring failed ({type(exc).__name__}): {exc}"
    if not results and not models:
        raise DataNotLoaded(
            "no logged predictions of any model yet.",
            "Serve predictions (`maquette serve`, POST /predict), then run this again.",
        )
    return results, skipped


def _retrain_on_incidents(
    settings: Settings, opened: list[Incident], announce: Callable[[str], None], step: Any
) -> dict[str, alerts.Retraining]:
    """Per model whose newly opened accuracy or drift incident asks for it: what retraining did."""
    retrained: dict[str, alerts.Retraining] = {}
    names = {i.model for i in opened if i.model and i.kind in alerts.RETRAIN_KINDS}
    for name in sorted(n for n in names if n in settings.models):
        if settings.model_spec(name).monitoring.retrain_on_alert:
            announce(f"{name}: incident opened, training a candidate version")
            retrained[name] = step(f"retrain-{name}", alerts.retrain, settings, name)
    return retrained


def _logged_models(settings: Settings) -> set[str]:
    folder = settings.path(settings.predictions.folder)
    return {p.name.removeprefix("model=") for p in folder.glob("date=*/model=*")}


def index_path(settings: Settings) -> Path:
    return settings.path(settings.paths.reports) / "monitoring" / "index.html"
