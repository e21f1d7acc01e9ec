"""`maquette predictions ...`, `labels ...` and `monitor ...`: what the served models did."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maquette.cli.options import (
    JsonOpt,
    PlainOpt,
    ProjectOpt,
    console,
    err,
    print_json,
    project_settings,
    when,
)
from maquette.cli.render import (
    alerts_view,
    incidents_document,
    metrics_document,
    metrics_series_table,
    monitor_summary,
)

# The prediction log and monitoring are imported inside the commands: they load Feast and
# Evidently, which take seconds, and `maquette --help` must not wait for them.

predictions_app = typer.Typer(
    help="The prediction log: drain it to Parquet, inspect it.", no_args_is_help=True
)
labels_app = typer.Typer(
    help="Late-arriving labels: ingest them, join them with predictions.", no_args_is_help=True
)
monitor_app = typer.Typer(
    help="Live accuracy of served models, monitoring passes, incidents.", no_args_is_help=True
)


@predictions_app.command("drain")
def predictions_drain(project: ProjectOpt = None) -> None:
    """Move logged predictions from the Redis Stream into Parquet (acknowledged once written).

    Example: maquette predictions drain
    """
    from maquette.cli.render_platform import flow_run_note
    from maquette.platform.flows import run_flow
    from maquette.serving import prediction_log as predictions

    settings = project_settings(project)
    run = run_flow(settings, "drain")
    if run is not None:  # the flow returns how many entries it moved
        console.print(f"drained {run.result:,} predictions")
    else:
        result = predictions.drain(settings)
        again = f" ({result.redelivered:,} redelivered after an interrupted drain)"
        files = f"into {len(result.files)} files{again if result.redelivered else ''}"
        console.print(f"drained {result.entries:,} predictions {files}")
        if result.busy:
            err.print(f"[yellow]{result.busy}[/yellow]")
    flow_run_note(err, run)


@predictions_app.command("count")
def predictions_count(as_json: JsonOpt = False, project: ProjectOpt = None) -> None:
    """How many log entries wait in the stream (one per request) and how many predictions
    are in Parquet.

    --json prints {"waiting": N entries, "drained": N predictions}.

    Example: maquette predictions count
    """
    from maquette.errors import DataNotLoaded
    from maquette.serving import prediction_log as predictions

    settings = project_settings(project)
    try:
        drained = predictions.read_predictions(settings).num_rows
    except DataNotLoaded:
        drained = 0
    waiting = predictions.pending(settings)
    if as_json:
        print_json({"waiting": waiting, "drained": drained})
    else:
        console.print(
            f"waiting in the stream: {waiting:,} entries (one per request); "
            f"drained: {drained:,} predictions"
        )


@labels_app.command("ingest")
def labels_ingest(
    name: Annotated[str, typer.Argument(help="Model whose labels to ingest.")],
    file: Annotated[
        Path | None, typer.Option(help="Parquet/CSV keyed by prediction_id or entity keys + time.")
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Store a model's labels (from its declared source, or a file) and join them to predictions.

    Example: maquette labels ingest MODEL
    """
    from maquette.monitoring import labels
    from maquette.serving import prediction_log

    settings = project_settings(project)
    result = labels.ingest_labels(settings, name, file)
    if not prediction_log.any_drained(settings):  # stored: the join waits for predictions
        console.print(f"{result.rows:,} labels stored; no drained predictions to join yet")
        return
    scored = labels.join_labels(settings, name)
    known = scored.num_rows - scored["label"].null_count
    console.print(
        f"{result.rows:,} labels stored; {known:,} of {scored.num_rows:,} logged predictions now have one"
    )
    if result.unknown_ids:
        err.print(
            f"[yellow]{result.unknown_ids:,} labels name prediction ids that were never logged[/]"
        )


@monitor_app.command("metrics")
def monitor_metrics(
    name: Annotated[str, typer.Argument(help="Model to report on.")],
    window: Annotated[str, typer.Option(help="hourly or daily.")] = "daily",
    since: Annotated[str | None, typer.Option(help="ISO start of the period.")] = None,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Live accuracy per version, partition and window, from predictions joined with labels.

    --json prints {"model", "window", "since", "series": [...]}: per version,
    partition and window its window_start, predictions, labelled, the task's
    metrics (rmse... or auc...) and missing_feature_rate.

    Example: maquette monitor metrics MODEL --since 2024-06-01
    """
    from maquette.monitoring import labels
    from maquette.monitoring.live_metrics import live_metrics

    settings = project_settings(project)
    scored = labels.join_labels(settings, name)
    series = live_metrics(settings, name, scored, window, when(since))
    if as_json:
        print_json(metrics_document(name, window, when(since), series))
    else:
        console.print(metrics_series_table(name, window, series))


@monitor_app.command("run")
def monitor_run(
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Only these models (repeatable).")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="ISO time freshness is judged at (default now).")
    ] = None,
    plain: PlainOpt = False,
    project: ProjectOpt = None,
) -> None:
    """One monitoring pass: drain, labels, join, metrics, Evidently reports, skew, incidents.

    Example: maquette monitor run --as-of 2024-07-01
    """
    from maquette.cli.render_platform import flow_run_note
    from maquette.data import redis_server
    from maquette.monitoring import monitor as monitoring
    from maquette.platform.flows import run_flow

    settings = project_settings(project)
    redis_server.ensure_redis(settings)
    args = (model or None, when(as_of))
    flow_run = None if plain else run_flow(settings, "monitor", *args)
    if flow_run is None:
        with console.status("monitoring") as status:
            run = monitoring.run(settings, model or None, when(as_of), announce=status.update)
    monitor_summary(console, flow_run.result if flow_run else run)
    flow_run_note(err, flow_run, plain)


@monitor_app.command("alerts")
def monitor_alerts(
    show_all: Annotated[bool, typer.Option("--all", help="Also list resolved incidents.")] = False,
    model: Annotated[str | None, typer.Option(help="Only this model's incidents.")] = None,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Incidents found by monitoring passes: open ones first, resolved ones with --all.

    One incident per kind, model and subject while its condition holds, with the columns and
    windows it covers. --json prints {"open": [...], "resolved": [...] (with --all)}, each an
    incident as stored (id, kind, model, subject, status, severity, opened_at, resolved_at,
    columns, windows, message, ...), newest first.

    Example: maquette monitor alerts --all --model MODEL
    """
    from maquette.monitoring import incidents

    settings = project_settings(project)
    if model is not None:
        settings.model_spec(model)  # an unknown name says which models exist
    found = [i for i in incidents.load(settings) if model is None or i.model == model]
    if as_json:
        print_json(incidents_document(found, show_all))
    else:
        alerts_view(console, found, show_all)
