"""`maquette bench alerts`: do the alerts find real faults fast, and stay quiet otherwise?

The faults file (`alerts_faults`) declares a replay period, the monitoring pass cadence and the
faults. The period is replayed twice on fresh copies of the project (`alerts_project`), each on
the real platform parts in one process (`alerts_replay`): once clean, once with the faults
injected into what the platform sees (`alerts_inject`). Then:
- per fault: the first incident that names what the file expects, opened (or naming the
  expected columns) at or after the onset; hours and windows from onset to that pass; whether
  it resolved after the repair, and how long after;
- the clean replay's incidents, per model and month, each explained by a data fact
  (`alerts_facts`) or not (a false alarm);
- drift references compared: each replay's log judged with the training, trailing and season
  references, incidents derived per reference with the monitoring's own rules.
Results as JSON and Markdown tables (`alerts_report`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from maquette.bench.alerts_facts import Facts
from maquette.bench.alerts_faults import Fault, FaultsFile
from maquette.bench.alerts_inject import check_faults
from maquette.bench.alerts_project import DEFAULT_DB, alerts_dir, replay_project
from maquette.bench.alerts_replay import Progress, ReplayRun, replay_run
from maquette.config import Settings
from maquette.features.layer import FeatureLayer
from maquette.model_spec import ReferenceKind
from maquette.monitoring import drift, incidents, labels, verdicts
from maquette.monitoring.incidents import Incident

REFERENCES: tuple[ReferenceKind, ...] = ("training", "trailing", "season")
RUNS = ("clean", "faulty")


@dataclass
class FaultResult:
    """How monitoring met one injected fault."""

    name: str
    kind: str
    onset: datetime
    repaired: datetime
    expect: dict[str, Any]
    detected: bool = False
    incident: dict[str, Any] | None = None  # id, kind, model, subject, columns
    detected_at: datetime | None = None
    hours_to_detect: float | None = None
    windows_to_detect: int | None = None
    resolved: bool | None = None
    hours_to_resolve: float | None = None  # after the repair
    during: list[str] = field(default_factory=list)  # other incidents opened while it lasted


@dataclass
class IncidentRow:
    """One incident of a replay, with the data fact that explains it (if any)."""

    run: str
    id: str
    kind: str
    model: str | None
    subject: str
    opened_at: str
    resolved_at: str | None
    columns: list[str]
    explained: bool
    fact: str = ""
    fault: str | None = None  # the faulty replay: the fault it was raised for or during


@dataclass
class ReferenceRow:
    """Drift judged with one reference kind on one replay, for one model."""

    reference: str
    run: str
    model: str
    windows: int  # complete windows with enough rows
    breached: int
    incidents: int
    fallbacks: int  # windows whose reference fell back to training (too few rows)
    faults: list[str] = field(default_factory=list)  # faults a drift incident overlapped


@dataclass
class AlertBenchResult:
    """Everything the benchmark measured."""

    faults_file: str
    replay: dict[str, Any]
    runs: dict[str, ReplayRun]
    faults: list[FaultResult]
    incidents: list[IncidentRow]
    references: list[ReferenceRow]
    seconds: dict[str, float] = field(default_factory=dict)

    def per_model_month(self, run: str = "clean") -> list[dict[str, Any]]:
        """Incidents of a replay per model (freshness: `-`) and month: all, explained, not."""
        counts: dict[tuple[str, str], list[int]] = {}
        for row in self.incidents:
            if row.run != run:
                continue
            key = (row.model or "-", row.opened_at[:7])
            total = counts.setdefault(key, [0, 0])
            total[0] += 1
            total[1] += row.explained
        return [
            {"model": m, "month": mo, "incidents": n, "explained": e, "unexplained": n - e}
            for (m, mo), (n, e) in sorted(counts.items())
        ]


def _ts(value: str | datetime) -> datetime:
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()  # type: ignore[no-any-return]


def _matches(incident: Incident, fault: Fault) -> bool:
    want = fault.expect
    return (
        incident.kind == want.kind
        and (want.model is None or incident.model == want.model)
        and (want.subject is None or incident.subject == want.subject)
        and set(want.columns) <= set(incident.columns)
    )


def _named_at(incident: Incident, fault: Fault) -> datetime:
    """The pass at which the incident first named everything the fault expects."""
    if not fault.expect.columns:
        return _ts(incident.opened_at)
    return max(_ts(incident.column_first_seen[c]) for c in fault.expect.columns)


def _window_length(settings: Settings, fault: Fault, plan: FaultsFile) -> timedelta | None:
    """How long one judged window of the expected kind lasts (passes for freshness)."""
    kind, model = fault.expect.kind, fault.expect.model
    if kind == "freshness" or model is None:
        return plan.replay.pass_interval
    resolved = settings.monitoring_of(model)
    window = resolved.drift_window if kind == "drift" else resolved.alert_window
    if window.every is not None:
        return window.every
    return timedelta(days=30) if window.calendar == "month" else None


def _windows_after(
    incident: Incident, fault: Fault, length: timedelta | None, at: datetime
) -> int | None:
    """Windows from the onset to the end of the first window naming the fault's columns."""
    if length is None:
        return None
    if fault.expect.kind == "freshness":
        return max(1, math.ceil((at - fault.start) / length))
    for window in incident.windows:
        end = _ts(window["end"])
        if end > fault.start and set(fault.expect.columns) <= set(window.get("columns", [])):
            return max(1, math.ceil((end - fault.start) / length))
    return None


def fault_result(
    settings: Settings, plan: FaultsFile, fault: Fault, found: list[Incident]
) -> FaultResult:
    """The first incident that names what the fault expects, raised at or after its onset."""
    result = FaultResult(
        fault.name, fault.kind, fault.start, fault.end, fault.expect.model_dump(exclude_none=True)
    )
    candidates = sorted(
        (
            (_named_at(i, fault), i)
            for i in found
            if _matches(i, fault) and _ts(i.last_window_end) > fault.start
        ),
        key=lambda pair: pair[0],
    )
    hits = [(at, i) for at, i in candidates if at >= fault.start]
    result.during = sorted(
        f"{i.kind} {i.model or '-'} {i.subject}"
        for i in found
        if fault.start <= _ts(i.opened_at) <= fault.end + plan.replay.pass_interval
        and not any(i is hit for _, hit in hits[:1])
    )
    if not hits:
        return result
    at, incident = hits[0]
    result.detected, result.detected_at = True, at
    result.incident = {
        "id": incident.id,
        "kind": incident.kind,
        "model": incident.model,
        "subject": incident.subject,
        "columns": incident.columns,
        "severity": incident.severity,
    }
    result.hours_to_detect = (at - fault.start).total_seconds() / 3600
    length = _window_length(settings, fault, plan)
    result.windows_to_detect = _windows_after(incident, fault, length, at)
    # The incident of that key open at the repair (the detecting one, or a later reopening).
    same = [
        i
        for i in found
        if (i.kind, i.model, i.subject) == (incident.kind, incident.model, incident.subject)
        and _ts(i.opened_at) >= _ts(incident.opened_at)
        and _ts(i.opened_at) <= fault.end
    ]
    last = same[-1] if same else incident
    result.resolved = last.status == "resolved"
    if last.resolved_at:
        result.hours_to_resolve = (_ts(last.resolved_at) - fault.end).total_seconds() / 3600
    return result


def incident_rows(
    run: str, settings: Settings, found: list[Incident], faults: list[FaultResult]
) -> list[IncidentRow]:
    """A replay's incidents, each with its explanation (a data fact, or the fault)."""
    facts = Facts(settings, FeatureLayer(settings))
    detecting = {f.incident["id"]: f.name for f in faults if f.incident}
    rows = []
    for incident in found:
        explanation = facts.explain(incident)
        row = IncidentRow(
            run,
            incident.id,
            incident.kind,
            incident.model,
            incident.subject,
            incident.opened_at,
            incident.resolved_at,
            incident.columns,
            explanation.explained,
            explanation.fact,
        )
        if run == "faulty":  # the fault it was raised for, else one in progress when it opened
            opened = _ts(incident.opened_at)
            during = (f.name for f in faults if f.onset <= opened <= f.repaired)
            row.fault = detecting.get(incident.id) or next(during, None)
        rows.append(row)
    return rows


def reference_rows(
    settings: Settings, run: str, as_of: datetime, faults: list[Fault]
) -> list[ReferenceRow]:
    """Drift over the replay's log judged with each reference kind; incidents derived with
    the monitoring's own verdict and incident rules, in a store of their own."""
    rows = []
    names = [n for n, s in settings.models.items() if s.labels is not None]
    for kind in REFERENCES:
        folder = settings.state_dir / "references" / kind
        judged = settings.model_copy(deep=True)
        judged.monitoring.reference = kind
        for spec in judged.models.values():
            spec.monitoring.reference = None
        judged.paths.reports = folder / "reports"
        judged.monitoring.workspace = folder / "evidently"
        store = judged.model_copy(deep=True)
        store.paths.offline_store = folder / "store"
        incidents.reset(store)
        per_model: dict[str, tuple[int, int, int]] = {}
        found: list[Any] = []
        for name in names:
            path = labels.scored_path(settings, name)
            if not path.is_file():
                continue
            reports = drift.window_reports(
                judged, name, pq.read_table(path), lambda _: None, as_of=as_of
            )
            found = verdicts.drift_verdicts(judged, name, reports)
            judged_windows = [v for v in found if v.status in (verdicts.BREACH, verdicts.CLEAR)]
            breached = sum(v.status == verdicts.BREACH for v in found)
            fallbacks = sum(r.complete and r.reference != kind for r in reports)
            per_model[name] = (len(judged_windows), breached, fallbacks)
            incidents.update(store, found, as_of)
        derived = incidents.load(store)
        for name, (windows, breached, fallbacks) in per_model.items():
            mine = [i for i in derived if i.model == name]
            covered = [
                f.name
                for f in faults
                if any(
                    _ts(i.first_window_start) < f.end and _ts(i.last_window_end) > f.start
                    for i in mine
                )
            ]
            rows.append(
                ReferenceRow(kind, run, name, windows, breached, len(mine), fallbacks, covered)
            )
    return rows


def alert_benchmark(
    settings: Settings,
    plan: FaultsFile,
    faults_file: str = "",
    redis_dbs: tuple[int, int] = (DEFAULT_DB, DEFAULT_DB),
    folder: Path | None = None,
    progress: Progress | None = None,
    announce: Callable[[str], None] = lambda _: None,
    references: bool = True,
) -> AlertBenchResult:
    """Replay `plan` clean and with its faults on fresh copies of the project; measure."""
    began = time.perf_counter()
    folder = folder or alerts_dir(settings)
    runs: dict[str, ReplayRun] = {}
    projects: dict[str, Settings] = {}
    for run, db in zip(RUNS, redis_dbs, strict=True):
        announce(f"{run} replay: fresh project in {folder / run}")
        project = replay_project(settings, folder / run, run, db, plan.replay.start)
        if run == "clean":  # the same views and tables as the faulty copy: fail before replaying
            check_faults(project, FeatureLayer(project), plan)
        projects[run] = project
        faults = list(plan.faults) if run == "faulty" else []
        runs[run] = replay_run(project, plan.replay, faults, run, progress)
        announce(f"{run} replay done in {runs[run].seconds['total']:.0f} s")
    found = {run: incidents.load(projects[run]) for run in RUNS}
    results = [fault_result(projects["faulty"], plan, f, found["faulty"]) for f in plan.faults]
    rows = [r for run in RUNS for r in incident_rows(run, projects[run], found[run], results)]
    compared: list[ReferenceRow] = []
    if references:
        for run in RUNS:
            announce(f"drift references on the {run} replay")
            faults = list(plan.faults) if run == "faulty" else []
            compared += reference_rows(projects[run], run, plan.replay.end, faults)
    replay = plan.replay.model_dump(mode="json")
    out = AlertBenchResult(faults_file, replay, runs, results, rows, compared)
    out.seconds["total"] = time.perf_counter() - began
    return out
