"""`maquette data ...` and `maquette features ...`: the offline store and the feature layer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape

from maquette.cli.options import (
    JsonOpt,
    ProjectOpt,
    console,
    err,
    print_json,
    progress_bars,
    project_settings,
    when,
)
from maquette.cli.render import online_features_table, tables_table

# The feature layer and the loader are imported inside the commands: Feast, pyarrow and DuckDB
# take seconds to import, and `maquette --help` must not wait for them.

data_app = typer.Typer(help="The offline store.", no_args_is_help=True)
features_app = typer.Typer(
    help="Feast feature views: apply, materialize, inspect.", no_args_is_help=True
)


@data_app.command("load")
def data_load(project: ProjectOpt = None) -> None:
    """Write the dataset's sources and feature tables to the offline store as Parquet.

    Example: maquette data load
    """
    from maquette.stream.backfill import load_dataset

    with console.status("loading"):
        tables = load_dataset(project_settings(project))
    console.print(tables_table(tables))


@features_app.command("apply")
def features_apply(project: ProjectOpt = None) -> None:
    """Register the feature repo's definitions with Feast (in-process `feast apply`).

    Example: maquette features apply
    """
    from maquette.features.layer import FeatureLayer

    names = FeatureLayer(project_settings(project)).apply()
    console.print(f"registered: {', '.join(names)}")


@features_app.command("materialize")
def features_materialize(
    start: Annotated[
        str | None,
        typer.Option(
            help="ISO start. Rows stamped earlier are skipped, a static table stamped long ago "
            "included. Default: each view's whole history the first time, then where it stopped."
        ),
    ] = None,
    end: Annotated[str | None, typer.Option(help="ISO end (inclusive); default: now.")] = None,
    view: Annotated[
        list[str] | None, typer.Option(help="Only this feature view (repeatable).")
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Write the newest feature values per entity into Redis (Feast's layout, in bulk).

    A view with nothing written gets a note saying why (empty table, no rows in the range,
    Redis already newer) and so does one whose rows are all older than its TTL.

    Example: maquette features materialize
    """
    from maquette.cli.render import materialize_table
    from maquette.cli.render_platform import flow_run_note, written_table
    from maquette.data import redis_server
    from maquette.features.layer import FeatureLayer
    from maquette.features.materialize import last_run_notes
    from maquette.platform.flows import run_flow

    settings = project_settings(project)
    redis_server.ensure_redis(settings)
    # Incremental runs are the `materialize` flow (what its schedule runs); a window is not.
    run = None if start or view else run_flow(settings, "materialize", when(end))
    if run is not None:
        console.print(written_table(run.result))
        _print_notes(last_run_notes(FeatureLayer(settings).feature_views(), run.result))
    else:
        layer = FeatureLayer(settings)
        bar, update = progress_bars()
        with bar:
            if start is None:
                result = layer.materialize_incremental(when(end), update, view, explain=True)
            else:
                began, ended = when(start), when(end, datetime.now(UTC))
                assert began is not None and ended is not None  # start was given; end defaults
                result = layer.materialize(began, ended, view, update, explain=True)
        console.print(materialize_table(result))
        _print_notes(result.notes)
    # A window or a chosen view never runs as the (incremental, every view) flow.
    flow_run_note(err, run, plain=start is not None or bool(view))


def _print_notes(notes: dict[str, str]) -> None:
    for name, why in notes.items():
        console.print(f"[yellow]{escape(name)}[/]: {escape(why)}")


@features_app.command("list")
def features_list(project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """List feature services, feature views, their features and TTLs.

    --json prints {feature_views, on_demand_feature_views, feature_services}.

    Example: maquette features list
    """
    from maquette.cli.render import feature_views_document, feature_views_table
    from maquette.features.layer import FeatureLayer

    layer = FeatureLayer(project_settings(project))
    if as_json:
        print_json(feature_views_document(layer))
    else:
        console.print(feature_views_table(layer))


@features_app.command("get")
def features_get(
    entity: Annotated[
        list[str] | None,
        typer.Argument(
            help="KEY=VALUE pairs: entity keys and request fields (none: a service "
            "of views without entities)."
        ),
    ] = None,
    service: Annotated[
        str | None, typer.Option(help="Feature service (default from settings).")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(help="ISO time staleness is judged at, as a request's as_of (default: now)."),
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Read one entity's features from the online store, with each value's status.

    Values take the types the feature repo declares (an INT64 entity's key is a number, a
    request field typed UnixTimestamp a time: ISO, UTC if no zone is given, or unix seconds).
    A view without entities needs no key.

    Example: maquette features get KEY=VALUE KEY2=VALUE2 TIME_FIELD=2024-06-01T15:00Z
    """
    from maquette.features.entity_rows import entity_row
    from maquette.features.layer import FeatureLayer

    layer = FeatureLayer(project_settings(project))
    row = entity_row(layer, _pairs(entity or []), service)
    result = layer.online_features([row], service, when(as_of))
    console.print(online_features_table(result))


def _pairs(words: list[str]) -> dict[str, str]:
    """KEY=VALUE words as a mapping (a word without "=" is a usage error)."""
    pairs: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise typer.BadParameter(f"{word!r} is not key=value")
        pairs[key] = value
    return pairs
