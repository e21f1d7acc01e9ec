"""What every command shares: the consoles, `--project` and `--json`, dates, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from maquette.errors import ConfigError

if TYPE_CHECKING:  # settings load pydantic-settings: 0.2 s that `maquette --help` need not pay
    from maquette.config import Settings

# Piped, a table is as wide as its widest row: rich would otherwise assume 80 columns (or
# $COLUMNS, often a terminal's leftover) and cut words ("importa…"). A program reading the
# output wants whole words, one line per row.
PIPED_WIDTH = 10_000


class _WholeWordsConsole(Console):
    """A console as wide as its content when its output is not a terminal (unless given a
    width); on a terminal, as wide as the terminal."""

    def __init__(self, width: int | None = None, **options: Any) -> None:
        super().__init__(width=width, **options)
        self._given_width = width

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._given_width is None and not self.is_terminal:
            return ConsoleDimensions(PIPED_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._given_width = new_size[0]
        self._width, self._height = new_size


console = _WholeWordsConsole()
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
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON document on stdout instead of tables, for programs: keys sorted, "
        "times in ISO 8601 with their UTC offset, durations in seconds; errors go to stderr.",
    ),
]


def _plain(value: object) -> object:
    """What orjson cannot write by itself: pandas times, paths, durations, missing values."""
    if isinstance(value, datetime | date | timedelta) and value != value:
        return None  # pandas NaT: like NaN, a missing value is not equal to itself
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def print_json(document: object) -> None:
    """`document` as one JSON document on stdout and nothing else (what `--json` prints)."""
    options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
    options |= orjson.OPT_NON_STR_KEYS
    sys.stdout.write(orjson.dumps(document, default=_plain, option=options).decode() + "\n")
    sys.stdout.flush()


def project_settings(project: Path | None) -> Settings:
    """The settings of the project in `project` (default: the current folder)."""
    from maquette.config import load_settings

    return load_settings(project)


def model_name(settings: Settings, name: str | None) -> str:
    """`name`, or the first model declared under `models:` when none is given."""
    if name is not None:
        return name
    if not settings.models:
        raise ConfigError(
            f"no model is declared in {settings.project_dir / 'maquette.yaml'}.",
            "Declare a model under models: in maquette.yaml (README 'Bring your own data' "
            "shows one), or name a registered one on the command line.",
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
            f"{text!r} is not an ISO date/time, e.g. 2024-06-01T00:00"
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
