"""Whether the platform's schedules work: each deployment's schedule, last and next run, and the
errors the Prefect server's scheduler logged.

`deployment_schedules` reads the platform's Prefect API (nothing when the server does not
answer); `scheduler_errors` reads the server's log since it last started. `maquette status`
shows both, so a user sees at a glance whether scheduled runs happen.

`hold_schedules` names deployments held paused by this process (the demo holds the wall-clock
materialization while it trains and replays history); the deployments' runner reads
`held_schedules` when it creates them, so one that starts or restarts meanwhile creates them
paused instead of letting a due schedule fire.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from maquette.config import Settings
from maquette.data.secrets import write_private
from maquette.platform.flows import platform_prefect, platform_prefect_url
from maquette.platform.supervisor import run_dir

# Seconds each API call may take: `status` must answer even if the server hangs.
API_TIMEOUT_S = 3.0
# Completed runs looked at when searching the newest one the scheduler started.
SCHEDULED_LOOKBACK = 50
# A line `up` writes into a component's log each time it starts it ("--- maquette up: ...").
START_MARKER = "--- "
# How Prefect's server names the scheduler's work in its log (service module, docket tasks).
_SCHEDULER = re.compile(r"prefect[./]server[./]services|schedul", re.IGNORECASE)
# The last line of a Python traceback: `package.module.SomeError: message`.
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Exit)\w*): ?(.*)$")
_ERROR_LINE = re.compile(r"\|\s*ERROR\s*\|")


@dataclass(frozen=True)
class RunSummary:
    """A flow run, as the schedules table shows it."""

    state: str  # Prefect's state name: Completed, Failed, Running, Crashed...
    at: datetime | None  # when it started (or was expected to)
    scheduled: bool  # started by the deployment's schedule, not by hand


@dataclass(frozen=True)
class DeploymentSchedule:
    """One deployment of the platform: its schedule, its last run and its next one."""

    name: str  # FLOW/DEPLOYMENT, e.g. drain/prediction-log
    crons: tuple[str, ...]  # one per schedule; an interval reads "every 0:01:00"
    timezone: str | None
    paused: bool  # the deployment, or every one of its schedules, is paused
    last_run: RunSummary | None
    last_scheduled_completed: datetime | None  # end of the newest scheduled run that Completed
    next_run: datetime | None  # earliest run waiting in a Scheduled state (Late included)


def deployment_schedules(settings: Settings) -> list[DeploymentSchedule]:
    """Every deployment on the platform's Prefect server, by name; [] when it does not answer."""
    api_url = platform_prefect_url(settings)
    if api_url is None:
        return []
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import DeploymentSort

    httpx_settings = {"timeout": API_TIMEOUT_S}
    try:
        with (
            platform_prefect(settings, api_url),
            get_client(httpx_settings=httpx_settings, sync_client=True) as client,
        ):
            deployments = client.read_deployments(limit=200, sort=DeploymentSort.NAME_ASC)
            flows = {d.flow_id: client.read_flow(d.flow_id).name for d in deployments}
            found = [_deployment_schedule(client, flows[d.flow_id], d) for d in deployments]
    except Exception:  # the server went away or timed out mid-way: nothing to show
        return []
    return sorted(found, key=lambda d: d.name)


def _deployment_schedule(client: Any, flow: str, deployment: Any) -> DeploymentSchedule:
    schedules = [s.schedule for s in deployment.schedules]
    zones = {str(s.timezone) for s in schedules if getattr(s, "timezone", None)}
    return DeploymentSchedule(
        name=f"{flow}/{deployment.name}",
        crons=tuple(_describe(s) for s in schedules),
        timezone=", ".join(sorted(zones)) or None,
        paused=bool(deployment.paused)
        or bool(schedules and not any(s.active for s in deployment.schedules)),
        last_run=_last_run(client, deployment.id),
        last_scheduled_completed=_last_scheduled_completed(client, deployment.id),
        next_run=_next_run(client, deployment.id),
    )


def _describe(schedule: Any) -> str:
    if getattr(schedule, "cron", None):
        return str(schedule.cron)
    if getattr(schedule, "interval", None):
        return f"every {schedule.interval}"
    return str(getattr(schedule, "rrule", schedule))


def _is_scheduled(run: Any) -> bool:
    """Started by a schedule: the scheduler marks its runs auto_scheduled, created by SCHEDULE."""
    created_by = getattr(run.created_by, "type", None)
    return bool(run.auto_scheduled) or created_by == "SCHEDULE"


def _runs(client: Any, deployment_id: Any, sort: str, limit: int, **state: Any) -> list[Any]:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    return list(
        client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(**state))
            ),
            sort=FlowRunSort[sort],
            limit=limit,
        )
    )


def _last_run(client: Any, deployment_id: Any) -> RunSummary | None:
    from prefect.client.schemas.objects import StateType

    # Newest run that left the Scheduled state: running now, or finished one way or another.
    runs = _runs(
        client, deployment_id, "EXPECTED_START_TIME_DESC", 1, not_any_=[StateType.SCHEDULED]
    )
    if not runs:
        return None
    run = runs[0]
    state = run.state.name if run.state else "Unknown"
    return RunSummary(state, run.start_time or run.expected_start_time, _is_scheduled(run))


def _last_scheduled_completed(client: Any, deployment_id: Any) -> datetime | None:
    from prefect.client.schemas.objects import StateType

    completed = _runs(
        client, deployment_id, "END_TIME_DESC", SCHEDULED_LOOKBACK, any_=[StateType.COMPLETED]
    )
    return next((run.end_time for run in completed if _is_scheduled(run)), None)


def _next_run(client: Any, deployment_id: Any) -> datetime | None:
    from prefect.client.schemas.objects import StateType

    waiting = _runs(
        client, deployment_id, "NEXT_SCHEDULED_START_TIME_ASC", 1, any_=[StateType.SCHEDULED]
    )
    if not waiting:
        return None
    run = waiting[0]
    return run.next_scheduled_start_time or run.expected_start_time  # type: ignore[no-any-return]


# ------------------------------------------------------------------ schedules held paused


def held_file(settings: Settings) -> Path:
    """Where the deployments held paused are named, with the process holding them."""
    return run_dir(settings) / "schedules_held.json"


def hold_schedules(settings: Settings, deployments: list[str]) -> None:
    """Name these deployments (FLOW/DEPLOYMENT) held paused by this process, until
    `release_schedules`: a runner that starts meanwhile creates them paused."""
    path = held_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps({"pid": os.getpid(), "deployments": sorted(deployments)}))


def release_schedules(settings: Settings) -> None:
    """End the hold: a runner that starts from now on creates the deployments active."""
    held_file(settings).unlink(missing_ok=True)


def held_schedules(settings: Settings) -> set[str]:
    """The deployments held paused, while the process holding them lives."""
    try:
        held = json.loads(held_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return set()
    # A holder killed before it released them holds nothing: the next runner start resumes them.
    if not psutil.pid_exists(int(held.get("pid", 0))):
        return set()
    return set(held.get("deployments", []))


# ------------------------------------------------------------------ the scheduler's own errors


def prefect_log(settings: Settings) -> Path:
    """The log file of the platform's Prefect server."""
    return settings.state_dir / "logs" / "prefect.log"


def scheduler_errors(settings: Settings) -> list[str]:
    """One line per distinct error the Prefect scheduler logged since the server last started."""
    path = prefect_log(settings)
    if not path.is_file():
        return []
    return scheduler_errors_in(path.read_text(errors="replace"))


def scheduler_errors_in(log: str) -> list[str]:
    """`scheduler_errors` of a log's text: "Error: message xN", in order of first appearance."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(START_MARKER)]
    lines = lines[starts[-1] + 1 :] if starts else lines
    counts: Counter[str] = Counter()
    for block in _error_blocks(lines):
        if not any(_SCHEDULER.search(line) for line in block):
            continue
        counts[_error_summary(block)] += 1
    return [f"{error} x{n}" if n > 1 else error for error, n in counts.items()]


def _error_blocks(lines: list[str]) -> list[list[str]]:
    """Each ERROR record with the traceback lines that follow it, up to the next log record."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        if _is_record(line):
            current = [line] if _ERROR_LINE.search(line) else None
            if current is not None:
                blocks.append(current)
        elif current is not None:
            current.append(line)
    return blocks


def _is_record(line: str) -> bool:
    """A log record of Prefect's format: `HH:MM:SS.mmm | LEVEL | logger - message`."""
    return bool(re.match(r"^\d\d:\d\d:\d\d\.\d+ \| ", line))


def _error_summary(block: list[str]) -> str:
    """`ErrorName: message` from the traceback's last line, or the record's own message."""
    for line in reversed(block):
        match = _EXCEPTION.match(line.strip())
        if match:
            return _short(f"{match.group(1)}: {match.group(2)}")
    return _short(block[0].split(" - ", 1)[-1])


def _short(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
