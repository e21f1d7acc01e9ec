"""What `status` shows of the components and schedules (tables, or `--json` documents), and the
line each flow command adds about Prefect.

The library's types are imported for type checking only: Prefect takes seconds to import, and
`maquette --help` must not wait for it.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from maquette.config import Settings
    from maquette.platform.components import ComponentStatus
    from maquette.platform.flows import PlatformFlowRun
    from maquette.platform.schedules import DeploymentSchedule

NOT_UP = "platform not up: ran without Prefect; `maquette up` records runs in its UI"


def when(value: datetime | None) -> str:
    """A time in UTC to the second ("" for None)."""
    return "" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def schedules_table(schedules: list[DeploymentSchedule]) -> Table:
    """Per deployment: schedule, last run (state, time, scheduled or by hand), next run."""
    colours = {"Completed": "green", "Running": "cyan", "Pending": "cyan", "Late": "yellow"}
    table = Table(
        "deployment",
        "schedule",
        "last run",
        "last scheduled success",
        "next run",
        title="schedules",
        caption="times in UTC",
    )
    now = datetime.now(UTC)
    for s in schedules:
        schedule = ", ".join(s.crons) or "[dim]on demand[/]"
        if s.timezone and s.crons:
            schedule += f" ({s.timezone})"
        if s.paused:
            schedule += " [yellow]paused[/]"
        last = ""
        if s.last_run is not None:
            how = "scheduled" if s.last_run.scheduled else "by hand"
            state = f"[{colours.get(s.last_run.state, 'red')}]{s.last_run.state}[/]"
            last = f"{state} {when(s.last_run.at)} ({how})"
        late = s.next_run is not None and s.next_run < now
        following = when(s.next_run) + (" [yellow]late[/]" if late else "")
        table.add_row(s.name, schedule, last, when(s.last_scheduled_completed), following)
    return table


def schedules_report(console: Console, settings: Settings) -> None:
    """The schedules table, and a red line when the Prefect scheduler logged errors."""
    from maquette.platform.flows import platform_prefect_url
    from maquette.platform.schedules import deployment_schedules, prefect_log, scheduler_errors

    if platform_prefect_url(settings) is None:
        return  # the server is down: `status` already says so, and no schedule can fire
    schedules = deployment_schedules(settings)
    if schedules:
        console.print(schedules_table(schedules))
    errors = scheduler_errors(settings)
    if errors:
        console.print("[red]The Prefect scheduler is failing: schedules may not fire.[/]")
        for error in errors:
            console.print(f"[red]  {escape(error)}[/]")
        console.print(f"[red]  see {prefect_log(settings)}[/]")


def status_document(
    settings: Settings, statuses: list[ComponentStatus], with_schedules: bool
) -> dict[str, Any]:
    """`status --json`: each component (with `is_up`), whether all are up, and, when asked and
    Prefect answers, each deployment's schedule and the scheduler's errors (else null)."""
    from maquette.platform.flows import platform_prefect_url
    from maquette.platform.schedules import deployment_schedules, scheduler_errors

    document: dict[str, Any] = {
        "components": [{**asdict(s), "is_up": s.is_up} for s in statuses],
        "up": all(s.is_up for s in statuses),
        "schedules": None,
        "scheduler_errors": None,
    }
    if with_schedules and platform_prefect_url(settings) is not None:
        document["schedules"] = [asdict(s) for s in deployment_schedules(settings)]
        document["scheduler_errors"] = scheduler_errors(settings)
    return document


def written_table(rows_written: dict[str, int]) -> Table:
    """Rows the `materialize` flow wrote per feature view."""
    table = Table("feature view", "rows written", title="materialized up to now")
    for name, rows in rows_written.items():
        table.add_row(name, f"{rows:,}")
    return table


def flow_run_note(console: Console, run: PlatformFlowRun | None, plain: bool = False) -> None:
    """Where the flow run is recorded, or that none was (unless --plain asked for that)."""
    if run is not None:
        console.print(f"[dim]{run.flow} flow run on the platform's Prefect: {run.url}[/]")
    elif not plain:
        console.print(f"[dim]{escape(NOT_UP)}[/]")
