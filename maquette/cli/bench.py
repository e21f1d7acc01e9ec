"""`maquette bench ...`: the stock way next to Maquette's, as ratios, in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maquette.cli.options import OutOpt, ProjectOpt, console, model_name, project_settings

# The benchmarks are imported inside the commands: they load Feast, Prefect and BentoML, which
# take seconds, and `maquette --help` must not wait for them.

bench_app = typer.Typer(
    help="Benchmarks: the stock way next to Maquette's, as ratios.", no_args_is_help=True
)
ModelArg = Annotated[
    str | None, typer.Argument(help="Model to use (default: the first declared in maquette.yaml).")
]


@bench_app.command("features")
def bench_features(
    rows: Annotated[int, typer.Option(help="Entities for the materialize benchmark.")] = 1_000_000,
    stock_rows: Annotated[
        int | None,
        typer.Option(help="Entities for stock Feast's materialize (default: same as --rows)."),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Online reads per case.")] = 2000,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Stock Feast next to Maquette: materialize, online reads, training frames (same run).

    Example: maquette bench features --rows 200000
    """
    from maquette.bench.features import run_feature_benchmarks

    settings = project_settings(project)
    markdown = run_feature_benchmarks(settings, rows, stock_rows or rows, repeats, console)
    if out:
        out.write_text(markdown)


@bench_app.command("cluster")
def bench_cluster(
    rows: Annotated[int, typer.Option(help="Entities to materialize.")] = 1_000_000,
    repeats: Annotated[int, typer.Option(help="Online reads per case.")] = 1000,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """One Redis next to a local three-master Redis Cluster: materialize, online reads.

    Example: maquette bench cluster --rows 200000
    """
    from maquette.bench.cluster import run_cluster_benchmarks

    markdown = run_cluster_benchmarks(project_settings(project), rows, repeats, console)
    if out:
        out.write_text(markdown)


@bench_app.command("monitoring")
def bench_monitoring(
    name: ModelArg = None,
    rows: Annotated[int, typer.Option(help="Logged predictions to join.")] = 1_000_000,
    drift_rows: Annotated[int, typer.Option(help="Rows per side of the drift case.")] = 100_000,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Label join + live metrics on a large log; Evidently drift, stock vs Maquette's path.

    Example: maquette bench monitoring --rows 200000 --drift-rows 20000
    """
    from maquette.bench.monitoring import run_monitoring_benchmarks

    settings = project_settings(project)
    name = model_name(settings, name)
    markdown = run_monitoring_benchmarks(settings, name, rows, drift_rows, console)
    if out:
        out.write_text(markdown)


@bench_app.command("training")
def bench_training(
    name: ModelArg = None,
    trials: Annotated[int, typer.Option(help="Search budget for both runs.")] = 4,
    project: ProjectOpt = None,
) -> None:
    """The train flow on a Prefect server next to the same steps as plain calls.

    Example: maquette bench training MODEL --trials 4
    """
    from maquette.bench.training import run_training_benchmark

    settings = project_settings(project)
    run_training_benchmark(settings, model_name(settings, name), trials, console)


@bench_app.command("serving")
def bench_serving(
    seconds: Annotated[int, typer.Option(help="Load duration per cell.")] = 10,
    platform: Annotated[
        bool,
        typer.Option(
            "--platform",
            help="Load the service `maquette up` started, the other components alive, after "
            "measuring each component's idle CPU. Its traffic is logged and monitored.",
        ),
    ] = False,
    idle_seconds: Annotated[int, typer.Option(help="With --platform: idle time measured.")] = 60,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Maquette's service vs BentoML + get_online_features vs a bare endpoint, with wrk.

    Example: maquette bench serving --seconds 10; maquette bench serving --platform
    """
    from maquette.bench.platform_load import run_platform_serving_benchmark
    from maquette.bench.serving import run_serving_benchmark
    from maquette.data import redis_server

    settings = project_settings(project)
    if platform:
        markdown = run_platform_serving_benchmark(settings, seconds, idle_seconds, console)
    else:
        redis_server.ensure_redis(settings)
        markdown = run_serving_benchmark(settings, seconds, console)
    if out:
        out.write_text(markdown)


@bench_app.command("stream")
def bench_stream(
    seconds: Annotated[float, typer.Option(help="Publishing time per Maquette rate.")] = 15,
    stock_seconds: Annotated[
        float, typer.Option(help="Publishing time per rate for stock FeatureStore.push.")
    ] = 8,
    backlog: Annotated[int, typer.Option(help="Events waiting before a capacity run.")] = 100_000,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """The stream processor vs stock FeatureStore.push at 1,000 and 5,000 events/s: rate and lag.

    Example: maquette bench stream --seconds 15
    """
    from maquette.bench.stream import run_stream_benchmark

    settings = project_settings(project)
    markdown = run_stream_benchmark(settings, seconds, stock_seconds, backlog, console)
    if out:
        out.write_text(markdown)


@bench_app.command("soak")
def bench_soak(
    minutes: Annotated[float, typer.Option(help="How long the traffic runs.")] = 5,
    rate: Annotated[float, typer.Option(help="Prediction requests per second, in all.")] = 20,
    clients: Annotated[int, typer.Option(help="Concurrent HTTP clients.")] = 4,
    events: Annotated[float, typer.Option(help="Stream events published per second.")] = 20,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """The whole platform under steady traffic, Redis and the stream processor killed once each;
    schedules fired, restarts, answers, and every acknowledged prediction found in Parquet once.

    Needs a trained project with the platform down (`maquette demo --quick` leaves one).

    Example: maquette bench soak --minutes 5
    """
    from maquette.bench.soak import run_soak, soak_table

    settings = project_settings(project)
    result = run_soak(settings, minutes, clients, rate, events, console=console)
    markdown = soak_table(result, console)
    if out:
        out.write_text(markdown)


@bench_app.command("search")
def bench_search(
    name: ModelArg = None,
    trials: Annotated[
        list[int] | None,
        typer.Option(help="Budget of trials (repeat for several; default: the spec's)."),
    ] = None,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Random search vs the tuned search (Optuna, pruning): same data, budget and seed.

    Example: maquette bench search MODEL --trials 6 --trials 20
    """
    from maquette.bench.search import run_search_benchmark

    markdown = run_search_benchmark(project_settings(project), name, trials or [], console)
    if out:
        out.write_text(markdown)


@bench_app.command("ray")
def bench_ray(
    name: Annotated[str | None, typer.Argument(help="Model (default: the first).")] = None,
    trials: Annotated[int, typer.Option(help="Search trials in each case.")] = 6,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Search trials on the local executor and on Ray with 1 and 2 workers (same run).

    Example: maquette bench ray flight_delay --trials 6
    """
    from maquette.bench.ray_fits import run_ray_benchmark

    markdown = run_ray_benchmark(project_settings(project), name, trials, console)
    if out:
        out.write_text(markdown)


@bench_app.command("replicas")
def bench_replicas(
    seconds: Annotated[int, typer.Option(help="Load duration per cell.")] = 10,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """The service's c=8 figures with one replica and with two side by side (same run, wrk).

    Example: maquette bench replicas --seconds 10
    """
    from maquette.bench.replicas import run_replicas_benchmark
    from maquette.data import redis_server

    settings = project_settings(project)
    redis_server.ensure_redis(settings)
    markdown = run_replicas_benchmark(settings, seconds, console)
    if out:
        out.write_text(markdown)


@bench_app.command("prefect-database")
def bench_prefect_database(
    tasks: Annotated[int, typer.Option(help="Task runs in the flow.")] = 200,
    runs: Annotated[int, typer.Option(help="Flows per database (the median is shown).")] = 3,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """The Prefect server's state in SQLite vs PostgreSQL: one flow of N task runs, same run.

    Example: maquette bench prefect-database --tasks 200
    """
    from maquette.bench.prefect_database import run_prefect_database_benchmark

    markdown = run_prefect_database_benchmark(project_settings(project), tasks, runs, console)
    if out:
        out.write_text(markdown)


@bench_app.command("startup")
def bench_startup(
    runs: Annotated[int, typer.Option(help="Starts of each server (and of `maquette up`).")] = 3,
    up: Annotated[
        bool, typer.Option("--up", help="Also time `maquette down` + `maquette up` (restarts it).")
    ] = False,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """How long a user waits: `maquette --help`, the service until ready, `maquette up`.

    Example: maquette bench startup --runs 3 --up
    """
    from maquette.bench.startup import run_startup_benchmark
    from maquette.data import redis_server

    settings = project_settings(project)
    redis_server.ensure_redis(settings)
    markdown = run_startup_benchmark(settings, runs, up, console)
    if out:
        out.write_text(markdown)


@bench_app.command("batch")
def bench_batch(
    name: ModelArg = None,
    alias: Annotated[str, typer.Option(help="Alias of the version to score with.")] = "production",
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Batch scoring of every entity row: stock Feast, predict-batch and the floor (same run).

    Example: maquette bench batch MODEL --alias production
    """
    from maquette.bench.batch import run_batch_benchmark

    markdown = run_batch_benchmark(project_settings(project), name, alias, console)
    if out:
        out.write_text(markdown)


@bench_app.command("durability")
def bench_durability(
    seconds: Annotated[int, typer.Option(help="Load duration per cell.")] = 10,
    out: OutOpt = None,
    project: ProjectOpt = None,
) -> None:
    """The cost of `redis.appendfsync: always` on the serving path, next to everysec, with wrk.

    Example: maquette bench durability --seconds 10
    """
    from maquette.bench.durability import run_durability_benchmark
    from maquette.data import redis_server

    settings = project_settings(project)
    redis_server.ensure_redis(settings)
    markdown = run_durability_benchmark(settings, seconds, console)
    if out:
        out.write_text(markdown)


@bench_app.command("alerts")
def bench_alerts(
    faults: Annotated[
        Path | None,
        typer.Option(
            help="Faults file (default: the project's alert_faults.yaml, else the dataset's)."
        ),
    ] = None,
    redis_db: Annotated[
        int, typer.Option(help="Redis database of the two replays (their keys differ).")
    ] = 2,
    references: Annotated[
        bool, typer.Option(help="Also compare the drift references on both replays.")
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option(help="Results as JSON here, Markdown beside it (.md); default in the state."),
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Replay a period twice (clean, then with injected faults) through the platform's real
    parts: which incident found each fault, how fast; false alarms on the clean replay.

    Needs a trained project (`maquette demo --quick` leaves one).

    Example: maquette bench alerts --faults alert_faults.yaml --out alerts.json
    """
    from maquette.bench.alerts_report import run_alert_bench

    settings = project_settings(project)
    run_alert_bench(settings, faults, out, console, redis_db, references)


@bench_app.command("offline-engine")
def bench_offline_engine(out: OutOpt = None, project: ProjectOpt = None) -> None:
    """Training frames and materialization's reads on DuckDB and on Feast's Spark store, and
    Feast's Ray store on a sample (same run).

    Example: maquette bench offline-engine
    """
    from maquette.bench.offline_engine import run_offline_engine_benchmark

    markdown = run_offline_engine_benchmark(project_settings(project), console)
    if out:
        out.write_text(markdown)
