"""`maquette stream ...`: the speed layer (publish, replay, processor, status, backfill, reset)."""

from __future__ import annotations

from typing import Annotated

import typer

from maquette.cli.options import (
    JsonOpt,
    ProjectOpt,
    console,
    err,
    print_json,
    project_settings,
    when,
)
from maquette.cli.render import stream_status_document, stream_status_tables, tables_table

# The stream modules are imported inside the commands: they load Feast's wire format and
# DuckDB, and `maquette --help` must not wait for them.

stream_app = typer.Typer(
    help="The speed layer: events -> windowed aggregates -> Feast.", no_args_is_help=True
)


def _speed(text: str) -> float | None:
    """ "600x" -> 600.0; "max" (or 0) -> None, as fast as possible."""
    if text.lower() in ("max", "0", "0x"):
        return None
    try:
        return float(text.lower().removesuffix("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a speed like 600x (or max)") from None


@stream_app.command("publish")
def stream_publish(
    events: Annotated[
        typer.FileText,
        typer.Argument(help="JSON lines, one event object per line; - reads standard input."),
    ],
    project: ProjectOpt = None,
) -> None:
    """Publish events to the event stream; a line that is not a valid event is reported by
    number and not sent, the others are.

    Example: maquette stream publish events.jsonl
    """
    from maquette.data import redis_server
    from maquette.stream.events import publish_lines

    settings = project_settings(project)
    redis_server.ensure_redis(settings)
    result = publish_lines(settings, events)
    console.print(f"published {result.published:,} events to {settings.stream.stream}")
    result.raise_for_rejected()


@stream_app.command("replay")
def stream_replay(
    start: Annotated[str, typer.Option("--from", help="ISO event time to start at.")],
    end: Annotated[str | None, typer.Option("--to", help="ISO event time to stop before.")] = None,
    speed: Annotated[
        str, typer.Option(help="Event-time acceleration, e.g. 600x (an hour in 6 s), or max.")
    ] = "600x",
    rate: Annotated[
        float | None, typer.Option(help="Publish this many events/s instead (ignores --speed).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    project: ProjectOpt = None,
) -> None:
    """Publish historical events to the event stream in event-time order.

    Example: maquette stream replay --from 2024-06-01 --speed 600x
    """
    from maquette.data import redis_server
    from maquette.stream.history import replay

    settings = project_settings(project)
    redis_server.ensure_redis(settings)
    with console.status("replaying") as status:
        result = replay(
            settings,
            when(start),  # type: ignore[arg-type]
            when(end),
            _speed(speed),
            rate,
            limit,
            lambda n, at: status.update(f"{n:,} events published, at {at:%Y-%m-%d %H:%M}"),
        )
    console.print(
        f"published {result.events:,} events ({result.first} .. {result.last}) "
        f"in {result.seconds:.1f} s to {settings.stream.stream}"
    )


@stream_app.command("run")
def stream_run(
    until_idle: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without events.")
    ] = None,
    max_events: Annotated[int | None, typer.Option(help="Stop after this many entries.")] = None,
    project: ProjectOpt = None,
) -> None:
    """Run the stream processor: windows per key, pushed to Feast (Ctrl-C or SIGTERM stops it).

    Example: maquette stream run --until-idle 10
    """
    from maquette.stream.foreground import run_until_stopped

    settings = project_settings(project)
    result = run_until_stopped(settings, until_idle, max_events, announce=err.print)
    console.print(
        f"{result.events:,} events applied ({result.redelivered:,} redelivered), "
        f"{result.late:,} late, {result.malformed:,} malformed; {result.online_rows:,} online "
        f"and {result.offline_rows:,} offline rows in {result.seconds:.1f} s"
    )


@stream_app.command("status")
def stream_status(
    dead: Annotated[int, typer.Option(help="Show this many of the newest dead letters.")] = 5,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The stream's length, pending and undelivered entries, counters, watermark, dead letters.

    --json prints the same as one document (counters, watermark, dead_letters, ...).

    Example: maquette stream status
    """
    from maquette.stream import operations

    settings = project_settings(project)
    state = operations.status(settings)
    letters = operations.dead_letters(settings, dead)
    if as_json:
        print_json(stream_status_document(state, letters))
        return
    for table in stream_status_tables(state, letters):
        console.print(table)


@stream_app.command("backfill")
def stream_backfill(project: ProjectOpt = None) -> None:
    """Recompute the streamed aggregates over historical events (DuckDB) into the offline store.

    Example: maquette stream backfill
    """
    from maquette.stream.backfill import backfill

    console.print(tables_table(backfill(project_settings(project))))


@stream_app.command("reset")
def stream_reset(project: ProjectOpt = None) -> None:
    """Delete the event stream, its consumer group, window state, counters and dead letters.

    Example: maquette stream reset
    """
    from maquette.stream import operations

    settings = project_settings(project)
    operations.reset(settings)
    console.print(f"reset {settings.stream.stream} (feature values already pushed stay)")
