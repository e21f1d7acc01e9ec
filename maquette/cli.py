"""`maquette ...`: each command parses its input, calls one maquette function, renders the result."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from maquette.config import Settings, load_settings
from maquette.data import redis_server
from maquette.data import sources as datasets
from maquette.errors import MaquetteError

app = typer.Typer(
    help="Maquette: the Michelangelo ML workflow on Feast, Prefect, BentoML and Evidently.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="The offline store.", no_args_is_help=True)
features_app = typer.Typer(
    help="Feast feature views: apply, materialize, inspect.", no_args_is_help=True
)
redis_app = typer.Typer(
    help="The online store's Redis (embedded unless redis.url is set).", no_args_is_help=True
)
bench_app = typer.Typer(
    help="Benchmarks: the stock way next to Maquette's, as ratios.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(redis_app, name="redis")
models_app = typer.Typer(
    help="The model repository: versions, records, aliases.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
app.add_typer(models_app, name="models")
labels_app = typer.Typer(
    help="Late-arriving labels: ingest them, join them with predictions.", no_args_is_help=True
)
monitor_app = typer.Typer(help="Live accuracy of served models.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")
app.add_typer(monitor_app, name="monitor")
predictions_app = typer.Typer(
    help="The prediction log: drain it to Parquet, inspect it.", no_args_is_help=True
)
app.add_typer(predictions_app, name="predictions")
stream_app = typer.Typer(
    help="The speed layer: departure events -> windowed aggregates -> Feast.", no_args_is_help=True
)
app.add_typer(stream_app, name="stream")

console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
ProjectOpt = Annotated[
    Path | None, typer.Option("--project", "-p", help="Folder holding maquette.yaml.")
]


def _settings(project: Path | None) -> Settings:
    return load_settings(project)


def reports_errors(func: F) -> F:
    """Turn a MaquetteError into its message, its remedy and a non-zero exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MaquetteError as exc:
            err.print(f"[bold red]error:[/] {exc.message}")
            if exc.remedy:
                err.print(f"  [yellow]->[/] {exc.remedy}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _when(text: str | None, default: datetime | None = None) -> datetime | None:
    if text is None:
        return default
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO date/time, e.g. 2013-12-01T00:00"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _progress() -> tuple[Progress, Callable[[str, int, int], None]]:
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


def _flow(settings: Settings, name: str) -> Any:
    """A flow from the project's flows/ folder (else the one beside this checkout of Maquette)."""
    import importlib

    for root in (settings.project_dir, Path(__file__).resolve().parent.parent):
        if (root / "flows" / f"{name}.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return getattr(importlib.import_module(f"flows.{name}"), name)
    raise typer.BadParameter(f"no flows/{name}.py in {settings.project_dir}")


# ---------------------------------------------------------------------------- main job


@app.command()
@reports_errors
def demo(
    quick: Annotated[
        bool, typer.Option(help="One search trial per model, a few days of traffic (for tests).")
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """Run the whole lifecycle on the configured dataset (nycflights13 by default).

    Example: maquette demo
    """
    from maquette.platform import demo as lifecycle

    settings = _settings(project)

    def through_prefect(s: Settings, name: str, trials: int | None) -> str:
        return str(_flow(s, "train")(name, trials, str(s.project_dir)))

    def monitor_flow(s: Settings, as_of: datetime) -> Any:
        return _flow(s, "monitor")(str(s.project_dir), None, as_of)

    from maquette.platform.components import prefect_api

    bar, update = _progress()
    # Flows run here report to the platform's Prefect server, not a throwaway one.
    with prefect_api(settings), bar:
        report = lifecycle.run_demo(
            settings,
            lambda s: bar.console.print(f"[cyan]>[/] {s}"),
            update,
            quick,
            through_prefect,
            monitor_flow,
        )
    from maquette.render import demo_summary

    demo_summary(console, report)


# ---------------------------------------------------------------------------- platform

ComponentOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--component", "-c", help="Only this component (repeatable; default: all configured)."
    ),
]


def _platform_table(statuses: list[Any]) -> Table:
    colours = {"running": "green", "unready": "yellow", "starting": "yellow"}
    logs = sorted({str(s.log.parent) for s in statuses if s.log})
    table = Table("component", "state", "url", "pid", "detail", caption=f"logs: {', '.join(logs)}")
    for s in statuses:
        state = f"[{colours.get(s.state, 'red')}]{s.state}[/]"
        table.add_row(s.name, state, s.url or "", str(s.pid or ""), s.detail)
    return table


@app.command("up")
@reports_errors
def platform_up(component: ComponentOpt = None, project: ProjectOpt = None) -> None:
    """Start the platform in the background, on loopback (what already runs is left alone).

    Redis, a Prefect server, the flows' deployments, the prediction service, the stream
    processor; logs in <state>/logs. Example: maquette up
    """
    from maquette.platform import components as platform

    with console.status("starting") as progress:
        statuses = platform.up(_settings(project), component, announce=progress.update)
    console.print(_platform_table(statuses))


@app.command("status")
@reports_errors
def platform_status(component: ComponentOpt = None, project: ProjectOpt = None) -> None:
    """Each component's state (running, crashed, stopped...), URL, pid and log; exit 1 if one is down.

    Example: maquette status
    """
    from maquette.platform import components as platform

    statuses = platform.status(_settings(project), component)
    console.print(_platform_table(statuses))
    if not all(s.is_up for s in statuses):
        raise typer.Exit(1)


@app.command("down")
@reports_errors
def platform_down(component: ComponentOpt = None, project: ProjectOpt = None) -> None:
    """Stop the platform's components in reverse order (SIGTERM, then SIGKILL after a timeout).

    Example: maquette down
    """
    from maquette.platform import components as platform

    with console.status("stopping") as progress:
        statuses = platform.down(_settings(project), component, announce=progress.update)
    console.print(_platform_table(statuses))


# ---------------------------------------------------------------------------- data


@data_app.command("load")
@reports_errors
def data_load(project: ProjectOpt = None) -> None:
    """Write the dataset's sources and feature tables to the offline store as Parquet.

    Example: maquette data load
    """
    with console.status("loading"):
        tables = datasets.load_dataset(_settings(project))
    from maquette.render import tables_table

    console.print(tables_table(tables))


# ---------------------------------------------------------------------------- features


@features_app.command("apply")
@reports_errors
def features_apply(project: ProjectOpt = None) -> None:
    """Register the feature repo's definitions with Feast (in-process `feast apply`).

    Example: maquette features apply
    """
    from maquette.features.layer import FeatureLayer

    names = FeatureLayer(_settings(project)).apply()
    console.print(f"registered: {', '.join(names)}")


@features_app.command("materialize")
@reports_errors
def features_materialize(
    start: Annotated[
        str | None, typer.Option(help="ISO start; default: where each view stopped.")
    ] = None,
    end: Annotated[str | None, typer.Option(help="ISO end (inclusive); default: now.")] = None,
    view: Annotated[
        list[str] | None, typer.Option(help="Only this feature view (repeatable).")
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Write the newest feature values per entity into Redis (Feast's layout, in bulk).

    Example: maquette features materialize --start 2013-01-01 --end 2014-01-02
    """
    from maquette.features.layer import FeatureLayer

    settings = _settings(project)
    redis_server.ensure_redis(settings)
    layer = FeatureLayer(settings)
    bar, update = _progress()
    with bar:
        if start is None:
            result = layer.materialize_incremental(_when(end), update)
        else:
            result = layer.materialize(_when(start), _when(end, datetime.now(UTC)), view, update)  # type: ignore[arg-type]
    from maquette.render import materialize_table

    console.print(materialize_table(result))


@features_app.command("list")
@reports_errors
def features_list(project: ProjectOpt = None) -> None:
    """List feature services, feature views, their features and TTLs.

    Example: maquette features list
    """
    from maquette.features.layer import FeatureLayer
    from maquette.render import feature_views_table

    console.print(feature_views_table(FeatureLayer(_settings(project))))


@features_app.command("get")
@reports_errors
def features_get(
    entity: Annotated[
        list[str], typer.Argument(help="key=value pairs, e.g. origin=JFK carrier=UA")
    ],
    service: Annotated[
        str | None, typer.Option(help="Feature service (default from settings).")
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Read one entity's features from the online store, with each value's status.

    Example: maquette features get origin=JFK tailnum=N14228 carrier=UA route=JFK-LAX \\
    scheduled_departure=2013-12-31T15:00
    """
    from maquette.features.layer import FeatureLayer

    row: dict[str, Any] = {}
    for pair in entity:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not key=value")
        row[key] = _when(value) if key.endswith(("_departure", "_time", "timestamp")) else value
    result = FeatureLayer(_settings(project)).online_features([row], service)
    table = Table("feature", "value", "status")
    for name in result.names:
        table.add_row(name, repr(result.values[0][name]), result.statuses[0][name])
    console.print(table)


# ---------------------------------------------------------------------------- training


@app.command()
@reports_errors
def train(
    name: Annotated[str, typer.Argument(help="Model declared under models: in maquette.yaml.")],
    trials: Annotated[int | None, typer.Option(help="Override the search budget.")] = None,
    plain: Annotated[
        bool, typer.Option(help="Run the steps as plain calls, without Prefect.")
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """Train a model with search and partitions, evaluate it, register a new version.

    Example: maquette train flight_delay --trials 4
    """
    settings = _settings(project)
    from maquette.training import pipeline as training

    training.ensure_trainable(settings, name)
    if plain:
        with console.status("training") as status:
            version = training.train(settings, name, trials, announce=status.update)
        tag = version.tag
    else:
        tag = _flow(settings, "train")(name, trials, str(settings.project_dir))
    from maquette import registry
    from maquette.render import version_summary

    version_summary(console, registry.resolve(settings, tag))


@models_app.command("list")
@reports_errors
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    project: ProjectOpt = None,
) -> None:
    """List registered versions with their test metrics and aliases.

    Example: maquette models list flight_delay
    """
    from maquette.render import versions_table

    console.print(versions_table(_settings(project), name))


@models_app.command("show")
@reports_errors
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole record as JSON.")
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """Show every field of a version's record.

    Example: maquette models show flight_delay@production
    """
    from maquette import registry
    from maquette.render import record_view

    settings = _settings(project)
    version = registry.resolve(settings, ref)
    if as_json:
        import json

        print(json.dumps(version.record, indent=2))
    else:
        record_view(console, settings, version)


@models_app.command("compare")
@reports_errors
def models_compare(
    a: Annotated[str, typer.Argument(help="First version (NAME:VERSION or NAME@ALIAS).")],
    b: Annotated[str, typer.Argument(help="Second version.")],
    project: ProjectOpt = None,
) -> None:
    """Test metrics and feature importances of two versions side by side.

    Example: maquette models compare flight_delay:v1 flight_delay:v2
    """
    from maquette import registry
    from maquette.render import comparison_tables

    for table in comparison_tables(registry.compare(_settings(project), a, b)):
        console.print(table)


@models_app.command("promote")
@reports_errors
def models_promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION (or NAME@ALIAS) to point the alias at.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    project: ProjectOpt = None,
) -> None:
    """Point NAME@ALIAS at a version; the move is kept in the alias history.

    Example: maquette models promote flight_delay:v2 --alias production
    """
    from maquette import registry

    move = registry.promote(_settings(project), ref, alias)
    was = f" (was {move['previous']})" if move["previous"] else ""
    console.print(
        f"{move['name']}@{alias} -> {move['version']}{was}, by {move['by']} at {move['at']}"
    )


@models_app.command("report")
@reports_errors
def models_report(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    project: ProjectOpt = None,
) -> None:
    """Print the path of a version's HTML report (open it in a browser).

    Example: maquette models report flight_delay@production
    """
    from maquette import registry

    print(registry.resolve(_settings(project), ref).report)


# ---------------------------------------------------------------------------- serving


@app.command()
@reports_errors
def serve(
    port: Annotated[int | None, typer.Option(help="Port (default serving.port).")] = None,
    project: ProjectOpt = None,
) -> None:
    """Start the BentoML prediction service on loopback (Ctrl-C stops it).

    Example: maquette serve --port 3000
    """
    from maquette.serving.predictor import service_process

    settings = _settings(project)
    redis_server.ensure_redis(settings)
    port = port or settings.serving.port
    console.print(
        f"serving on http://{settings.serving.host}:{port} (Swagger UI at /, POST /predict)"
    )
    raise typer.Exit(service_process(settings.project_dir, settings.serving.host, port).wait())


@app.command()
@reports_errors
def build(project: ProjectOpt = None) -> None:
    """Build a bento holding the service, the maquette package and every @production model.

    Example: maquette build
    """
    import subprocess

    import yaml

    from maquette import registry

    settings = _settings(project)
    root = Path(__file__).resolve().parent.parent
    spec = yaml.safe_load((root / "bentos" / "bentofile.yaml").read_text())
    alias = settings.serving.default_alias
    spec["models"] = [registry.resolve(settings, f"{name}@{alias}").tag for name in settings.models]
    # The bento answers NAME@alias from a snapshot of the alias table taken now.
    snapshot = root / "bentos" / ".aliases.json"
    snapshot.write_text(settings.path(settings.registry.aliases).read_text())
    spec["include"] = [*spec["include"], "bentos/.aliases.json"]
    spec["envs"] = [{"name": "MAQUETTE_REGISTRY_ALIASES", "value": "bentos/.aliases.json"}]
    target = settings.state_dir / "bentofile.yaml"
    target.write_text(yaml.safe_dump(spec))
    console.print(f"building with models {', '.join(spec['models'])}")
    env = {**os.environ, "UV_OFFLINE": "1"}  # builds offline; the package index is not needed
    raise typer.Exit(
        subprocess.call(
            [sys.executable, "-m", "bentoml", "build", "-f", str(target), str(root)],
            cwd=root,
            env=env,
        )
    )


@app.command("predict-batch")
@reports_errors
def predict_batch(
    entities: Annotated[
        str, typer.Argument(help="Parquet/CSV path, or a DuckDB SELECT over the offline store.")
    ],
    model: Annotated[str, typer.Option(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    output: Annotated[Path, typer.Option(help="Parquet file to write.")],
    project: ProjectOpt = None,
) -> None:
    """Score entities with point-in-time features; every row carries the model version.

    Example: maquette predict-batch "SELECT * FROM flights WHERE event_timestamp >= '2013-12-01'" \
    --model flight_delay@production --output december.parquet
    """
    from maquette.serving import batch

    result = batch.predict_batch(_settings(project), entities, model, output)
    console.print(
        f"{result.version}: {result.rows:,} rows in {result.seconds:.2f}s "
        f"({result.rows_per_second:,.0f} rows/s) -> {result.path}"
    )


@predictions_app.command("drain")
@reports_errors
def predictions_drain(project: ProjectOpt = None) -> None:
    """Move logged predictions from the Redis Stream into Parquet (acknowledged once written).

    Example: maquette predictions drain
    """
    from maquette.serving import prediction_log as predictions

    result = predictions.drain(_settings(project))
    again = (
        f" ({result.redelivered:,} redelivered after an interrupted drain)"
        if result.redelivered
        else ""
    )
    console.print(f"drained {result.entries:,} predictions into {len(result.files)} files{again}")


@predictions_app.command("count")
@reports_errors
def predictions_count(project: ProjectOpt = None) -> None:
    """How many predictions wait in the stream and how many are in Parquet.

    Example: maquette predictions count
    """
    from maquette.errors import DataNotLoaded
    from maquette.serving import prediction_log as predictions

    settings = _settings(project)
    try:
        drained = predictions.read_predictions(settings).num_rows
    except DataNotLoaded:
        drained = 0
    console.print(f"waiting in the stream: {predictions.pending(settings):,}; drained: {drained:,}")


# ---------------------------------------------------------------------------- monitoring


@labels_app.command("ingest")
@reports_errors
def labels_ingest(
    name: Annotated[str, typer.Argument(help="Model whose labels to ingest.")],
    file: Annotated[
        Path | None, typer.Option(help="Parquet/CSV keyed by prediction_id or entity keys + time.")
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Store a model's labels (from its declared source, or a file) and join them to predictions.

    Example: maquette labels ingest flight_delay
    """
    from maquette.monitoring import labels

    settings = _settings(project)
    result = labels.ingest_labels(settings, name, file)
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
@reports_errors
def monitor_metrics(
    name: Annotated[str, typer.Argument(help="Model to report on.")],
    window: Annotated[str, typer.Option(help="hourly or daily.")] = "daily",
    since: Annotated[str | None, typer.Option(help="ISO start of the period.")] = None,
    project: ProjectOpt = None,
) -> None:
    """Live accuracy per version, partition and window, from predictions joined with labels.

    Example: maquette monitor metrics flight_delay --since 2013-12-01
    """
    from maquette.monitoring import labels
    from maquette.monitoring import monitor as monitoring

    settings = _settings(project)
    series = monitoring.live_metrics(
        settings, name, labels.join_labels(settings, name), window, _when(since)
    )
    table = Table(
        *[c for c in series.columns if c not in ("model", "window")],
        title=f"{name}: {window} metrics",
    )
    for row in series.drop(columns=["model", "window"]).itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v)[:16] for v in row])
    console.print(table)


@monitor_app.command("run")
@reports_errors
def monitor_run(
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Only these models (repeatable).")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="ISO time freshness is judged at (default now).")
    ] = None,
    plain: Annotated[
        bool, typer.Option(help="Run the steps as plain calls, without Prefect.")
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """One monitoring pass: drain, labels, join, metrics, Evidently reports, skew, alerts.

    Example: maquette monitor run --as-of 2014-01-01
    """
    from maquette.monitoring import monitor as monitoring
    from maquette.render import monitor_summary

    settings = _settings(project)
    redis_server.ensure_redis(settings)
    when = _when(as_of)
    if plain:
        with console.status("monitoring") as status:
            run = monitoring.run(settings, model or None, when, announce=status.update)
    else:
        run = _flow(settings, "monitor")(str(settings.project_dir), model or None, when)
    monitor_summary(console, run)


# ---------------------------------------------------------------------------- speed layer


def _speed(text: str) -> float | None:
    if text.lower() in ("max", "0", "0x"):
        return None
    try:
        return float(text.lower().removesuffix("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a speed like 600x (or max)") from None


@stream_app.command("replay")
@reports_errors
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
    """Publish historical departures to the event stream in event-time order.

    Example: maquette stream replay --from 2013-12-01 --speed 600x
    """
    from maquette.stream import processor as stream

    settings = _settings(project)
    redis_server.ensure_redis(settings)
    with console.status("replaying") as status:
        result = stream.replay(
            settings,
            _when(start),  # type: ignore[arg-type]
            _when(end),
            _speed(speed),
            rate,
            limit,
            lambda n, when: status.update(f"{n:,} events published, at {when:%Y-%m-%d %H:%M}"),
        )
    console.print(
        f"published {result.events:,} departures ({result.first} .. {result.last}) "
        f"in {result.seconds:.1f} s to {settings.stream.stream}"
    )


@stream_app.command("run")
@reports_errors
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
    import signal
    import threading

    from maquette.stream import processor as stream

    settings = _settings(project)
    redis_server.ensure_redis(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    processor = stream.StreamProcessor(settings)
    err.print(f"processing {settings.stream.stream} (group {settings.stream.group})")
    result = processor.run(until_idle, max_events, stop)
    console.print(
        f"{result.events:,} events applied ({result.redelivered:,} redelivered), "
        f"{result.late:,} late, {result.malformed:,} malformed; {result.online_rows:,} online "
        f"and {result.offline_rows:,} offline rows in {result.seconds:.1f} s"
    )


@stream_app.command("status")
@reports_errors
def stream_status(
    dead: Annotated[int, typer.Option(help="Show this many of the newest dead letters.")] = 5,
    project: ProjectOpt = None,
) -> None:
    """The stream's length, pending and undelivered entries, counters, watermark, dead letters.

    Example: maquette stream status
    """
    from maquette.stream import processor as stream

    settings = _settings(project)
    table = Table("field", "value", show_header=False)
    for name, value in vars(stream.status(settings)).items():
        table.add_row(
            name, "-" if value is None else f"{value:,}" if isinstance(value, int) else value
        )
    console.print(table)
    letters = stream.dead_letters(settings, dead)
    if letters:
        dead_table = Table("source id", "reason", title="newest dead letters")
        for letter in letters:
            dead_table.add_row(letter.get("source_id", ""), letter.get("reason", ""))
        console.print(dead_table)


@stream_app.command("backfill")
@reports_errors
def stream_backfill(project: ProjectOpt = None) -> None:
    """Recompute the streamed aggregates over historical departures (DuckDB) into the offline store.

    Example: maquette stream backfill
    """
    from maquette.render import tables_table
    from maquette.stream import processor as stream

    console.print(tables_table(stream.backfill(_settings(project))))


@stream_app.command("reset")
@reports_errors
def stream_reset(project: ProjectOpt = None) -> None:
    """Delete the event stream, its consumer group, window state, counters and dead letters.

    Example: maquette stream reset
    """
    from maquette.stream import processor as stream

    settings = _settings(project)
    stream.reset(settings)
    console.print(f"reset {settings.stream.stream} (feature values already pushed stay)")


# ---------------------------------------------------------------------------- redis


@redis_app.command("start")
@reports_errors
def redis_start(project: ProjectOpt = None) -> None:
    """Start the embedded Redis (or check the configured one answers).

    Example: maquette redis start
    """
    console.print(f"Redis ready at {redis_server.ensure_redis(_settings(project))}")


@redis_app.command("status")
@reports_errors
def redis_status(project: ProjectOpt = None) -> None:
    """Show whether Redis answers, with its pid, version, memory, keys and AOF state.

    Example: maquette redis status
    """
    state = redis_server.status(_settings(project))
    table = Table("field", "value", show_header=False)
    for name, value in vars(state).items():
        table.add_row(name, str(value))
    console.print(table)
    if not state.running:
        raise typer.Exit(1)


@redis_app.command("stop")
@reports_errors
def redis_stop(project: ProjectOpt = None) -> None:
    """Stop the embedded Redis; its append-only file keeps the data for the next start.

    Example: maquette redis stop
    """
    stopped = redis_server.stop(_settings(project))
    console.print("stopped" if stopped else "was not running")


# ---------------------------------------------------------------------------- bench


@bench_app.command("features")
@reports_errors
def bench_features(
    rows: Annotated[int, typer.Option(help="Entities for the materialize benchmark.")] = 1_000_000,
    stock_rows: Annotated[
        int | None,
        typer.Option(help="Entities for stock Feast's materialize (default: same as --rows)."),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Online reads per case.")] = 2000,
    out: Annotated[Path | None, typer.Option(help="Also write the table as Markdown here.")] = None,
    project: ProjectOpt = None,
) -> None:
    """Stock Feast next to Maquette: materialize, online reads, training frames (same run).

    Example: maquette bench features --rows 200000
    """
    from maquette.bench.cases import run_feature_benchmarks

    markdown = run_feature_benchmarks(
        _settings(project), rows, stock_rows or rows, repeats, console
    )
    if out:
        out.write_text(markdown)


@bench_app.command("monitoring")
@reports_errors
def bench_monitoring(
    name: Annotated[str, typer.Argument(help="Model whose newest version scores the log.")] = (
        "flight_delay"
    ),
    rows: Annotated[int, typer.Option(help="Logged predictions to join.")] = 1_000_000,
    drift_rows: Annotated[int, typer.Option(help="Rows per side of the drift case.")] = 100_000,
    out: Annotated[Path | None, typer.Option(help="Also write the table as Markdown here.")] = None,
    project: ProjectOpt = None,
) -> None:
    """Label join + live metrics on a large log; Evidently drift, stock vs Maquette's path.

    Example: maquette bench monitoring --rows 200000 --drift-rows 20000
    """
    from maquette.bench.monitoring import run_monitoring_benchmarks

    markdown = run_monitoring_benchmarks(_settings(project), name, rows, drift_rows, console)
    if out:
        out.write_text(markdown)


@bench_app.command("training")
@reports_errors
def bench_training(
    name: Annotated[str, typer.Argument(help="Model to train.")] = "flight_delay",
    trials: Annotated[int, typer.Option(help="Search budget for both runs.")] = 4,
    project: ProjectOpt = None,
) -> None:
    """The train flow on a Prefect server next to the same steps as plain calls.

    Example: maquette bench training flight_delay --trials 4
    """
    from maquette.bench.cases import run_training_benchmark

    run_training_benchmark(_settings(project), name, trials, console)


@bench_app.command("serving")
@reports_errors
def bench_serving(
    seconds: Annotated[int, typer.Option(help="Load duration per cell.")] = 10,
    out: Annotated[Path | None, typer.Option(help="Also write the table as Markdown here.")] = None,
    project: ProjectOpt = None,
) -> None:
    """Maquette's service vs BentoML + get_online_features vs a bare endpoint, with wrk.

    Example: maquette bench serving --seconds 10
    """
    from maquette.bench.cases import run_serving_benchmark

    settings = _settings(project)
    redis_server.ensure_redis(settings)
    markdown = run_serving_benchmark(settings, seconds, console)
    if out:
        out.write_text(markdown)


@bench_app.command("stream")
@reports_errors
def bench_stream(
    seconds: Annotated[float, typer.Option(help="Publishing time per Maquette rate.")] = 15,
    stock_seconds: Annotated[
        float, typer.Option(help="Publishing time per rate for stock FeatureStore.push.")
    ] = 8,
    backlog: Annotated[int, typer.Option(help="Events waiting before a capacity run.")] = 100_000,
    out: Annotated[Path | None, typer.Option(help="Also write the table as Markdown here.")] = None,
    project: ProjectOpt = None,
) -> None:
    """The stream processor vs stock FeatureStore.push at 1,000 and 5,000 events/s: rate and lag.

    Example: maquette bench stream --seconds 15
    """
    from maquette.bench.cases import run_stream_benchmark

    markdown = run_stream_benchmark(_settings(project), seconds, stock_seconds, backlog, console)
    if out:
        out.write_text(markdown)


def main() -> None:
    import warnings

    # Libraries' deprecation notices are for their developers, not for Maquette's users. Feast
    # inserts its own warning filters on import, so drop these at display time instead.
    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, DeprecationWarning | FutureWarning | PendingDeprecationWarning):
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    # Offline, Prefect's server analytics only write errors into its log.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    app(prog_name="maquette")


if __name__ == "__main__":  # pragma: no cover
    main()
