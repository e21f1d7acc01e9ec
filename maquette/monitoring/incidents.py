"""Incidents: one open alert per (kind, model, subject) that people can act on.

Verdicts of judged windows (`verdicts.py`) move a small state machine per key:
- `open_after` consecutive breaching windows open an incident listing every affected column
  and window; while it is open, further breaches add their windows and columns to it;
- `resolve_after` consecutive clear windows resolve it; a later breach opens a new incident;
- "not enough data" is skipped: it neither counts as a breach nor as a clear window.
Each judged window is applied once per key (the windows judged before are remembered), in
window order; freshness is judged at each pass, so its verdicts are applied at every pass.

The store is one JSON file, `offline_store/monitoring/incidents.json`, replaced atomically.
The optional webhook gets `{"source": "maquette", "event": "opened"|"resolved", "incident"}`
for each event; an event whose POST failed stays pending and is sent at the next pass.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from maquette.config import Settings
from maquette.errors import ConfigError
from maquette.monitoring.verdicts import BREACH, CLEAR, Finding, Verdict, iso

# Judged windows remembered per key; older ones are covered by `judged_before`.
KEEP_JUDGED = 2000
SEVERITY_RANK = {"warning": 0, "critical": 1}


@dataclass
class Incident:
    """An incident, open or resolved, as the store, the CLI and the webhook show it."""

    id: str
    kind: str
    model: str | None
    subject: str
    status: str  # open | resolved
    severity: str  # warning | critical (the worst of its windows)
    opened_at: str  # the `as_of` of the pass that opened it
    resolved_at: str | None
    first_window_start: str
    last_window_end: str
    columns: list[str]  # sorted union over its windows
    windows: list[dict[str, Any]]  # {start, end, columns, values, severity}
    message: str  # of the latest breaching window
    column_first_seen: dict[str, str]  # column -> the pass (as_of) that first listed it
    notified: dict[str, bool] = field(default_factory=lambda: {"opened": False, "resolved": False})
    # What the incident set off: {"at", "action": "retrain", "summary", "flow_run_id", "version"}.
    actions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class IncidentChanges:
    """What one `update` did: incidents opened, resolved, updated (new windows) and all open."""

    opened: list[Incident]
    resolved: list[Incident]
    updated: list[Incident]
    open: list[Incident]


@dataclass
class _KeyState:
    """Where one (kind, model, subject) stands between passes."""

    breaches: int = 0  # consecutive breaching windows while no incident is open
    clears: int = 0  # consecutive clear windows while one is open
    pending: list[dict[str, Any]] = field(default_factory=list)  # breaches not yet opened
    judged: list[list[str]] = field(default_factory=list)  # [start, end] applied already
    judged_before: str | None = None  # windows ending at or before this were applied
    open: str | None = None  # id of the open incident
    count: int = 0  # incidents opened so far


@dataclass
class _Store:
    incidents: list[Incident]
    keys: dict[str, _KeyState]


def incidents_path(settings: Settings) -> Path:
    return settings.offline_store / "monitoring" / "incidents.json"


def _key(kind: str, model: str | None, subject: str) -> str:
    return f"{kind}|{model or ''}|{subject}"


def _read(settings: Settings) -> _Store:
    path = incidents_path(settings)
    if not path.is_file():
        return _Store([], {})
    try:
        raw = json.loads(path.read_text())
        return _Store(
            [Incident(**i) for i in raw["incidents"]],
            {k: _KeyState(**s) for k, s in raw["keys"].items()},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the incident store {path} cannot be read ({exc}).",
            "Move it aside (monitoring starts a new one at the next pass) and keep the old "
            "file for the record.",
        ) from exc


def _write(settings: Settings, store: _Store) -> None:
    """Replace the store atomically: a crash leaves the old file or the new one, never half."""
    path = incidents_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "incidents": [asdict(i) for i in store.incidents],
        "keys": {k: asdict(s) for k, s in sorted(store.keys.items())},
    }
    fd, tmp = tempfile.mkstemp(prefix=".incidents-", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def load(settings: Settings, status: str | None = None) -> list[Incident]:
    """The recorded incidents (only `status`, "open" or "resolved", if given), oldest first."""
    return [i for i in _read(settings).incidents if status is None or i.status == status]


def record_retraining(
    settings: Settings, opened: list[Incident], retrained: dict[str, Any], when: datetime
) -> None:
    """Note on each opened incident the retraining it started for its model (an
    `alerts.Retraining`: its summary, flow run or trained version)."""
    ids = {i.id: i.model for i in opened if i.model is not None and i.model in retrained}
    if not ids:
        return
    with _locked(settings):
        _note_retraining(settings, ids, retrained, when)


def _note_retraining(
    settings: Settings, ids: dict[str, str], retrained: dict[str, Any], when: datetime
) -> None:
    store = _read(settings)
    for incident in store.incidents:
        if incident.id in ids:
            done = retrained[ids[incident.id]]
            incident.actions.append(
                {
                    "at": when.isoformat(),
                    "action": "retrain",
                    "summary": done.summary,
                    "flow_run_id": done.flow_run_id,
                    "version": done.version,
                }
            )
    _write(settings, store)


def reset(settings: Settings) -> None:
    """Forget every incident and judged window (a replay starting over uses it)."""
    incidents_path(settings).unlink(missing_ok=True)


def _merge(verdicts: list[Verdict]) -> Verdict:
    """One verdict per window of a key: versions served side by side are judged together."""
    first = verdicts[0]
    breaches = [v.finding for v in verdicts if v.status == BREACH and v.finding]
    if not breaches:
        status = CLEAR if any(v.status == CLEAR for v in verdicts) else first.status
        return Verdict(*first.key, first.window_start, first.window_end, status)
    breaches.sort(key=lambda f: -SEVERITY_RANK[f.severity])
    values: dict[str, float] = {}
    limits: dict[str, float] = {}
    for found in reversed(breaches):  # the worst one's values win
        values.update(found.values)
        limits.update(found.limits)
    finding = Finding(
        sorted({c for f in breaches for c in f.columns}),
        values,
        limits,
        breaches[0].severity,
        "\n".join(dict.fromkeys(f.message for f in breaches)),
    )
    return Verdict(*first.key, first.window_start, first.window_end, BREACH, finding)


# Kinds whose single windows move with the world: one stormy day breaches accuracy and drift,
# and one day a weather station's sensor is out (or few flights leave a carrier-hour without a
# departure) breaches missing features. They wait for `open_after` windows; a broken pipeline
# lasts. Skew (served unlike offline) and freshness (a view not updated) open on the first.
PERSISTENT_KINDS = {"accuracy", "drift", "missing_features"}


def _rules(settings: Settings, kind: str, model: str | None) -> tuple[int, int]:
    """(open_after, resolve_after) of a key: the model's; checks of the platform's own data
    open on their first breach; freshness also resolves on its first clear pass."""
    if kind == "freshness" or model is None or model not in settings.models:
        return 1, 1
    resolved = settings.monitoring_of(model)
    opens = resolved.open_after if kind in PERSISTENT_KINDS else 1
    return opens, resolved.resolve_after


def _update(
    settings: Settings, verdicts: Iterable[Verdict], as_of: datetime | None = None
) -> IncidentChanges:
    """Apply a pass's verdicts to the incidents (each judged window once); store the result."""
    now = iso(as_of or datetime.now(UTC))
    store = _read(settings)
    by_id = {i.id: i for i in store.incidents}
    grouped: dict[str, dict[tuple[str, str], list[Verdict]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for v in verdicts:
        grouped[_key(*v.key)][(v.window_end, v.window_start)].append(v)
    opened: dict[str, Incident] = {}
    resolved: dict[str, Incident] = {}
    updated: dict[str, Incident] = {}
    for key in sorted(grouped):
        state = store.keys.setdefault(key, _KeyState())
        seen = {(start, end) for start, end in state.judged}
        for (end, start), same in sorted(grouped[key].items()):
            verdict = _merge(same)
            open_after, resolve_after = _rules(settings, verdict.kind, verdict.model)
            if verdict.kind != "freshness":  # freshness is judged anew at every pass
                if (start, end) in seen or (
                    state.judged_before is not None and _at_or_before(end, state.judged_before)
                ):
                    continue
                seen.add((start, end))
                state.judged.append([start, end])
            if verdict.status == BREACH:
                assert verdict.finding is not None
                window = _window(verdict, verdict.finding)
                state.clears = 0
                incident = by_id.get(state.open) if state.open else None
                if incident is not None:
                    _add(incident, window, verdict.finding.message, now)
                    updated[incident.id] = incident
                    continue
                _append(state.pending, window, verdict.kind)
                state.breaches += 1
                if state.breaches >= open_after:
                    incident = _open(state, verdict, verdict.finding.message, now)
                    store.incidents.append(incident)
                    by_id[incident.id] = opened[incident.id] = incident
            elif verdict.status == CLEAR:
                state.breaches, state.pending = 0, []
                if state.open is None:
                    continue
                state.clears += 1
                if state.clears >= resolve_after:
                    incident = by_id[state.open]
                    incident.status, incident.resolved_at = "resolved", now
                    resolved[incident.id] = incident
                    state.open, state.clears = None, 0
            # "not enough data": skipped, it neither breaches nor clears.
        _forget_old(state)
    _write(settings, store)
    return IncidentChanges(
        list(opened.values()),
        list(resolved.values()),
        [i for k, i in updated.items() if k not in opened],
        [i for i in store.incidents if i.status == "open"],
    )


def _at_or_before(a: str, b: str) -> bool:
    return bool(pd.Timestamp(a) <= pd.Timestamp(b))


def _forget_old(state: _KeyState) -> None:
    """Keep the newest KEEP_JUDGED judged windows; the older ones by their latest end."""
    if len(state.judged) <= KEEP_JUDGED:
        return
    state.judged.sort(key=lambda w: pd.Timestamp(w[1]))
    dropped, state.judged = state.judged[:-KEEP_JUDGED], state.judged[-KEEP_JUDGED:]
    ends = [dropped[-1][1]] + ([state.judged_before] if state.judged_before else [])
    state.judged_before = max(ends, key=pd.Timestamp)


def _window(verdict: Verdict, finding: Finding) -> dict[str, Any]:
    return {
        "start": verdict.window_start,
        "end": verdict.window_end,
        "columns": list(finding.columns),
        "values": dict(finding.values),
        "severity": finding.severity,
    }


def _append(windows: list[dict[str, Any]], window: dict[str, Any], kind: str) -> None:
    """Add a window; a stale view whose newest value has not moved grows its last window."""
    last = windows[-1] if windows else None
    if kind == "freshness" and last is not None and last["start"] == window["start"]:
        last["end"] = window["end"]
        last["columns"] = sorted(set(last["columns"]) | set(window["columns"]))
        last["values"].update(window["values"])
        if SEVERITY_RANK[window["severity"]] > SEVERITY_RANK[last["severity"]]:
            last["severity"] = window["severity"]
        return
    windows.append(window)


def _open(state: _KeyState, verdict: Verdict, message: str, now: str) -> Incident:
    windows, state.pending, state.breaches = state.pending, [], 0
    state.count += 1
    who = f"{verdict.model}:" if verdict.model else ""
    incident = Incident(
        id=f"{verdict.kind}:{who}{verdict.subject}#{state.count}",
        kind=verdict.kind,
        model=verdict.model,
        subject=verdict.subject,
        status="open",
        severity="warning",
        opened_at=now,
        resolved_at=None,
        first_window_start=windows[0]["start"],
        last_window_end=windows[-1]["end"],
        columns=[],
        windows=[],
        message=message,
        column_first_seen={},
    )
    for window in windows:
        _add(incident, window, message, now)
    state.open = incident.id
    return incident


def _add(incident: Incident, window: dict[str, Any], message: str, now: str) -> None:
    """Add a breaching window to an incident: its columns, severity, latest message."""
    _append(incident.windows, window, incident.kind)
    for column in window["columns"]:
        incident.column_first_seen.setdefault(column, now)
    incident.columns = sorted(set(incident.columns) | set(window["columns"]))
    if SEVERITY_RANK[window["severity"]] > SEVERITY_RANK[incident.severity]:
        incident.severity = window["severity"]
    incident.first_window_start = min(
        [incident.first_window_start, window["start"]], key=pd.Timestamp
    )
    incident.last_window_end = max([incident.last_window_end, window["end"]], key=pd.Timestamp)
    incident.message = message


def _notify(settings: Settings) -> str | None:
    """POST every event not yet delivered to the webhook; the error text if a POST failed.

    Events go in order, opened before resolved; at the first failure the rest wait for the next
    pass, so none is lost. Without a webhook, nothing is pending (events are not kept for a
    webhook set later).
    """
    store = _read(settings)
    url = settings.monitoring.webhook
    due = [
        (incident, event)
        for incident in store.incidents
        for event in ("opened", "resolved")
        if not incident.notified[event] and (event == "opened" or incident.status == "resolved")
    ]
    if not due:
        return None
    error = None
    if url:
        import httpx  # only needed when a webhook is set

    for incident, event in due:
        if url:
            try:
                response = httpx.post(
                    url,
                    json=_plain(
                        {"source": "maquette", "event": event, "incident": asdict(incident)}
                    ),
                    timeout=settings.monitoring.webhook_timeout_s,
                )
                response.raise_for_status()
            except httpx.HTTPError as exc:
                waiting = len(due) - due.index((incident, event))
                # Only the webhook's host: its path often holds the token (Slack, Teams).
                parts = httpx.URL(url)
                host = f"{parts.host}:{parts.port}" if parts.port else parts.host
                why = (
                    f"HTTP {exc.response.status_code}"
                    if isinstance(exc, httpx.HTTPStatusError)
                    else type(exc).__name__
                )
                error = (
                    f"webhook at {host} failed ({why}); {waiting} incident event(s) are sent again "
                    f"at the next pass (incidents in {incidents_path(settings)})"
                )
                break
        incident.notified[event] = True
    _write(settings, store)
    return error


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Hold the store's lock: a scheduled pass and one started by hand never interleave their
    read-change-write (windows applied twice, an event posted twice)."""
    path = incidents_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update(
    settings: Settings, verdicts: Iterable[Verdict], as_of: datetime | None = None
) -> IncidentChanges:
    """Apply a pass's verdicts to the incidents (under the store's lock); what changed."""
    with _locked(settings):
        return _update(settings, verdicts, as_of)


def notify(settings: Settings) -> str | None:
    """POST the events not yet delivered (under the store's lock); the error text if one failed."""
    with _locked(settings):
        return _notify(settings)


def _plain(value: Any) -> Any:
    """`value` with every non-finite number as null: JSON (and so a webhook) has no NaN or
    infinity, and one such value must not hold back every later event."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
