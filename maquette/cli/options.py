"""What every command shares: the consoles, the `--project` option, dates, progress bars."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from maquette.config import Settings, load_settings
from maquette.errors import ConfigError

console = Console()
err = Console(stderr=True)

ProjectOpt = Annotated[
    Path | None, typer.Option("--project", "-p", help="Folder holding maquette.yaml.")
]
ComponentOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--component", "-c", help="Only this component (repeatable; default: all configured)."
    ),
]
PlainOpt = Annotated[bool, typer.Option(help="Run the steps as plain calls, without Prefect.")]
OutOpt = Annotated[Path | None, typer.Option(help="Also write the table as Markdown here.")]


def project_settings(project: Path | None) -> Settings:
    """The settings of the project in `project` (default: the current folder)."""
    return load_settings(project)


def model_name(settings: Settings, name: str | None) -> str:
    """`name`, or the first model declared under `models:` when none is given."""
    if name is not None:
        return name
    if not settings.models:
        raise ConfigError(
            "no model is declared in maquette.yaml.", "Declare one under models:, or name one."
        )
    return next(iter(settings.models))


def when(text: str | None, default: datetime | None = None) -> datetime | None:
    """An ISO date/time from the command line, in UTC unless it names its zone."""
    if text is None:
        return default
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO date/time, e.g. 2013-12-01T00:00"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def progress_bars() -> tuple[Progress, Callable[[str, int, int], None]]:
    """A set of progress bars and the callback (name, done, total) that moves them."""
    bar = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def update(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done)

    return bar, update
