"""`maquette train`, `models ...`, `serve`, `build`, `predict-batch`: from training to use."""

from __future__ import annotations

import signal
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
)

# Training, the registry and serving are imported inside the commands: they load BentoML,
# Prefect or Feast, which take seconds, and `maquette --help` must not wait for them.

commands = typer.Typer()
models_app = typer.Typer(
    help="The model repository: versions, records, aliases.", no_args_is_help=True
)
RefArg = Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")]


@commands.command()
def train(
    name: Annotated[str, typer.Argument(help="Model declared under models: in maquette.yaml.")],
    trials: Annotated[int | None, typer.Option(help="Override the search budget.")] = None,
    plain: PlainOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Train a model with search and partitions, evaluate it, register a new version.

    Example: maquette train MODEL --trials 4
    """
    from maquette import registry
    from maquette.cli.render_models import version_summary
    from maquette.cli.render_platform import flow_run_note
    from maquette.platform.flows import run_flow
    from maquette.training import pipeline as training

    settings = project_settings(project)
    training.ensure_trainable(settings, name)
    run = None if plain else run_flow(settings, "train", name, trials)
    if run is None:
        with console.status("training") as status:
            tag = training.train(settings, name, trials, announce=status.update).tag
    version_summary(console, registry.resolve(settings, run.result if run else tag))
    flow_run_note(err, run, plain)


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """List registered versions with their test metrics and aliases.

    --json prints {"versions": [...]}: per version its model, version, tag,
    created, aliases, path, report, task, algorithm and test_metrics
    ({"model": {...}, "baseline": {...}}).

    Example: maquette models list MODEL --json
    """
    from maquette.cli.render_models import versions_document, versions_table

    settings = project_settings(project)
    if as_json:
        print_json(versions_document(settings, name))
    else:
        console.print(versions_table(settings, name))


@models_app.command("show")
def models_show(ref: RefArg, as_json: JsonOpt = False, project: ProjectOpt = None) -> None:
    """Show every field of a version's record.

    --json prints the version's model, version, tag, created, aliases, path,
    report, alias_history, and its whole record.json as "record".

    Example: maquette models show MODEL@production
    """
    from maquette import registry
    from maquette.cli.render_models import record_view, version_document

    settings = project_settings(project)
    version = registry.resolve(settings, ref)
    if as_json:
        print_json(version_document(settings, version))
    else:
        record_view(console, settings, version)


@models_app.command("compare")
def models_compare(
    a: Annotated[str, typer.Argument(help="First version (NAME:VERSION or NAME@ALIAS).")],
    b: Annotated[str, typer.Argument(help="Second version.")],
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Test metrics and feature importances of two versions side by side.

    --json prints {"a", "b", "metrics": [{"metric", "a", "b"}],
    "importance": [{"feature", "a", "b"}]}.

    Example: maquette models compare MODEL:v1 MODEL:v2
    """
    from maquette import registry
    from maquette.cli.render_models import comparison_document, comparison_tables

    comparison = registry.compare(project_settings(project), a, b)
    if as_json:
        print_json(comparison_document(comparison))
        return
    for table in comparison_tables(comparison):
        console.print(table)


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION (or NAME@ALIAS) to point the alias at.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    project: ProjectOpt = None,
) -> None:
    """Point NAME@ALIAS at a version; the move is kept in the alias history.

    Example: maquette models promote MODEL:v2 --alias production
    """
    from maquette import registry

    move = registry.promote(project_settings(project), ref, alias)
    was = f" (was {move['previous']})" if move["previous"] else ""
    console.print(
        f"{move['name']}@{alias} -> {move['version']}{was}, by {move['by']} at {move['at']}"
    )


@models_app.command("route")
def models_route(
    name: Annotated[str, typer.Argument(help="The model whose requests are routed.")],
    traffic: Annotated[
        list[str] | None,
        typer.Option(help="VERSION=WEIGHT, once per version of the split (none: no split)."),
    ] = None,
    no_split: Annotated[
        bool, typer.Option(help="End the split set here (maquette.yaml's applies again).")
    ] = False,
    shadow: Annotated[
        str | None, typer.Option(help="A version scored beside, never returned.")
    ] = None,
    no_shadow: Annotated[
        bool, typer.Option(help="End the shadow set here (maquette.yaml's applies again).")
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """Split NAME's requests over versions or shadow one, on every replica within a second.

    Example: maquette models route MODEL --traffic v3=0.9 --traffic v4=0.1 --shadow v5
    """
    from maquette import registry

    weights = parse_weights(traffic or []) if traffic or no_split else None
    made = registry.route(project_settings(project), name, weights, "" if no_shadow else shadow)
    split = made.get("traffic", "as in maquette.yaml")
    shadowed = made.get("shadow", "as in maquette.yaml")
    console.print(f"{name}: traffic {split}, shadow {shadowed}, by {made['by']} at {made['at']}")


def parse_weights(pairs: list[str]) -> dict[str, float]:
    """{version: weight} of VERSION=WEIGHT pairs; a clear error for anything else."""
    weights = {}
    for pair in pairs:
        version, _, weight = pair.partition("=")
        try:
            weights[version] = float(weight)
        except ValueError:
            raise typer.BadParameter(f"{pair!r} is not VERSION=WEIGHT (e.g. v3=0.9)") from None
    return weights


@models_app.command("report")
def models_report(ref: RefArg, project: ProjectOpt = None) -> None:
    """Print the path of a version's HTML report (open it in a browser).

    Example: maquette models report MODEL@production
    """
    from maquette import registry

    print(registry.resolve(project_settings(project), ref).report)


@commands.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Port (default serving.port).")] = None,
    project: ProjectOpt = None,
) -> None:
    """Start the BentoML prediction service on loopback (Ctrl-C stops it).

    Example: maquette serve --port 3000
    """
    from maquette.data import redis_server
    from maquette.serving.server import service_process

    settings = project_settings(project)
    redis_server.ensure_redis(settings)
    host, port = settings.serving.host, port or settings.serving.port
    console.print(f"serving on http://{host}:{port} (Swagger UI at /, POST /predict)")
    server = service_process(settings, host, port)
    # `kill PID` of this command stops its server too, instead of leaving it on the port.
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    raise typer.Exit(server.wait())


@commands.command()
def build(project: ProjectOpt = None) -> None:
    """Build a bento holding the service, the maquette package and every @production model.

    The spec is the project's <paths.bentos>/bentofile.yaml.

    Example: maquette build
    """
    from maquette.serving.bento import build_bento

    raise typer.Exit(build_bento(project_settings(project), announce=console.print))


@commands.command("predict-batch")
def predict_batch(
    entities: Annotated[
        str, typer.Argument(help="Parquet/CSV path, or a DuckDB SELECT over the offline store.")
    ],
    model: Annotated[str, typer.Option(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    output: Annotated[Path, typer.Option(help="Parquet file to write.")],
    project: ProjectOpt = None,
) -> None:
    """Score entities with point-in-time features; every row carries the model version.

    Example: maquette predict-batch "SELECT * FROM TABLE WHERE event_timestamp >= '2024-06-01'" \
    --model MODEL@production --output scores.parquet
    """
    from maquette.serving import batch

    # In this process, not as a flow: the batch_predict flow takes no entities or paths (a
    # run's parameters can be set by any client of the Prefect server).
    with console.status("scoring ...") as status:
        result = batch.predict_batch(
            project_settings(project),
            entities,
            model,
            output,
            progress=lambda rows: status.update(f"scored {rows:,} rows ..."),
        )
    console.print(
        f"{result.version}: {result.rows:,} rows ({result.rows_per_second:,.0f} rows/s) "
        f"-> {result.path}"
    )
