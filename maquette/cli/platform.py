"""`maquette demo`, `up`, `status`, `down`, `worker`, `ui` and `redis ...`: the running platform."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from maquette.cli.options import (
    ComponentOpt,
    JsonOpt,
    ProjectOpt,
    console,
    print_json,
    progress_bars,
    project_settings,
)
from maquette.cli.render import fields_table, platform_table

# Library modules are imported inside the commands: Feast, Prefect and BentoML take seconds to
# import, and `maquette --help` must not wait for them.

commands = typer.Typer()
redis_app = typer.Typer(
    help="The online store's Redis (embedded unless redis.url is set).", no_args_is_help=True
)


@commands.command()
def demo(
    quick: Annotated[
        bool, typer.Option(help="One search trial per model, a few days of traffic (for tests).")
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """Run the whole lifecycle on the configured dataset (`dataset:` in maquette.yaml).

    Example: maquette demo
    """
    from maquette.cli.render_demo import demo_summary
    from maquette.platform.demo import run_demo_on_platform

    bar, update = progress_bars()

    def announce(stage: str) -> None:
        bar.console.print(f"[cyan]>[/] {stage}")

    with bar:
        report = run_demo_on_platform(project_settings(project), announce, update, quick)
    demo_summary(console, report)


@commands.command("up")
def platform_up(component: ComponentOpt = None, project: ProjectOpt = None) -> None:
    """Start the platform in the background, on loopback (what already runs is left alone).

    Redis, a Prefect server, the flows' deployments, the prediction service, the stream
    processor, kept running by a supervisor that restarts whatever exits; logs in
    <state>/logs. Example: maquette up
    """
    from maquette.platform import components as platform

    with console.status("starting") as progress:
        statuses = platform.up(project_settings(project), component, announce=progress.update)
    console.print(platform_table(statuses))


@commands.command("status")
def platform_status(
    component: ComponentOpt = None, as_json: JsonOpt = False, project: ProjectOpt = None
) -> None:
    """Each component's state (running, restarting, gave up, stopped...), restarts, last exit and
    log; exit 1 if one is down.

    Then each deployment's schedule, last run and next run, and any error of Prefect's scheduler.

    --json prints {"components": [...], "up", "schedules", "scheduler_errors"}:
    per component its name, state, url, pid, log, detail, restarts, last_exit
    and is_up; schedules and scheduler_errors are null when Prefect is down
    or not asked for.

    Example: maquette status
    """
    from maquette.cli.render_platform import schedules_report, status_document
    from maquette.platform import components as platform

    settings = project_settings(project)
    statuses = platform.status(settings, component)
    with_schedules = not component or bool({"prefect", "deployments"} & set(component))
    if as_json:
        print_json(status_document(settings, statuses, with_schedules))
    else:
        console.print(platform_table(statuses))
        if with_schedules:
            schedules_report(console, settings)
    if not all(s.is_up for s in statuses):
        raise typer.Exit(1)


@commands.command("down")
def platform_down(component: ComponentOpt = None, project: ProjectOpt = None) -> None:
    """Stop the platform's components in reverse order (SIGTERM, then SIGKILL after a timeout).

    Example: maquette down
    """
    from maquette.platform import components as platform

    with console.status("stopping") as progress:
        statuses = platform.down(project_settings(project), component, announce=progress.update)
    console.print(platform_table(statuses))


@commands.command("worker")
def platform_worker(project: ProjectOpt = None) -> None:
    """Run a Prefect worker of orchestration.work_pool here, apart from the platform (blocks).

    It runs the flows of the platform's deployments from this copy of the project, against the
    Prefect server its settings name (orchestration.host, prefect_port, prefect_auth).

    Example: maquette worker --project .  (with MAQUETTE_ORCHESTRATION_HOST=platform.example)
    """
    from maquette.platform.work_pool import start_worker

    settings = project_settings(project)
    console.print(
        f"worker of the pool {settings.orchestration.work_pool!r} on "
        f"{settings.orchestration.prefect_url}, flows from {settings.project_dir}"
    )
    start_worker(settings)


@commands.command("ui")
def console_ui(
    screenshots: Annotated[
        Path | None,
        typer.Option(help="Write a PNG of each main page into this folder (chromium), then exit."),
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """The web console: models, versions and their records, aliases (move one), live accuracy,
    features, alerts, platform status. Serves on console.host:console.port until Ctrl-C.

    Example: maquette ui   (then open http://127.0.0.1:4212)
    """
    settings = project_settings(project)
    if screenshots is not None:
        from maquette.console.browser import screenshots as take

        for path in take(settings, screenshots):
            console.print(f"wrote {path}")
        return
    from maquette.console import serve

    console.print(f"Maquette console on http://{settings.console.host}:{settings.console.port}")
    serve(settings)


@redis_app.command("start")
def redis_start(project: ProjectOpt = None) -> None:
    """Start the embedded Redis (or check the configured one answers).

    Example: maquette redis start
    """
    from maquette.data import redis_server
    from maquette.data.secrets import redact

    url = redis_server.ensure_redis(project_settings(project))
    console.print(f"Redis ready at {redact(url)}")


@redis_app.command("status")
def redis_status(as_json: JsonOpt = False, project: ProjectOpt = None) -> None:
    """Show whether Redis answers, with its pid, version, memory, keys and AOF state.

    --json prints {"url", "embedded", "running", "pid", "version",
    "used_memory", "keys", "aof_enabled", "data_dir"}.

    Example: maquette redis status
    """
    from maquette.data import redis_server

    state = redis_server.status(project_settings(project))
    if as_json:
        print_json(asdict(state))
    else:
        console.print(fields_table(state))
    if not state.running:
        raise typer.Exit(1)


@redis_app.command("stop")
def redis_stop(project: ProjectOpt = None) -> None:
    """Stop the embedded Redis; its append-only file keeps the data for the next start.

    Example: maquette redis stop
    """
    from maquette.data import redis_server

    stopped = redis_server.stop(project_settings(project))
    console.print("stopped" if stopped else "was not running")
