"""`maquette bench prefect-database`: one flow of N task runs against the platform's Prefect
server with its state in SQLite and in PostgreSQL, same run, and the floor: the same N calls
as plain Python.

Each server is the platform's own (`maquette up --component prefect` of a scratch project under
`<state>/bench`, the PostgreSQL one with the `postgres` component Maquette runs). A flow in a
process of its own submits N tasks (Prefect's thread pool runner); the figures are the flow's
wall time as its client sees it, and the time until the server has recorded every task run
as Completed (Prefect records task runs from events, after the flow returns: that is where
the database writes). Repeated `runs` times per database; the median is shown.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator

import yaml
from rich.console import Console

from maquette.bench.harness import bench_dir, free_port, results_table
from maquette.config import Settings, load_settings
from maquette.data import postgres_server
from maquette.platform import components as platform
from maquette.platform.launch import prefect_client_env, project_env

DATABASES = ("sqlite", "postgresql")
HEADERS = ("measure", "SQLite", "PostgreSQL", "PostgreSQL / SQLite", "floor (plain Python)")


def run_prefect_database_benchmark(
    settings: Settings, tasks: int, runs: int, console: Console
) -> str:
    """Prints the table and returns it as Markdown."""
    console.print(f"[bold]prefect database[/] ({tasks} task runs per flow, {runs} flows each)")
    with _without_maquette_env():
        figures = {d: _measure(settings, d, tasks, runs, console) for d in DATABASES}
    floor = _flow(None, tasks, plain=True)["flow_s"]
    cells = []
    for measure, key in (
        ("flow wall time (client), s", "flow_s"),
        ("until the server holds every task run, s", "recorded_s"),
    ):
        sqlite, postgresql = figures["sqlite"][key], figures["postgresql"][key]
        cells.append(
            (
                measure,
                f"{sqlite:.2f}",
                f"{postgresql:.2f}",
                f"{postgresql / sqlite:.2f}x",
                f"{floor:.3f}" if key == "flow_s" else "",
            )
        )
    title = f"Prefect server state: {tasks} task runs in one flow (median of {runs})"
    return results_table(console, title, HEADERS, cells) + "\n"


@contextlib.contextmanager
def _without_maquette_env() -> Iterator[None]:
    """The scratch projects read their own maquette.yaml only: a MAQUETTE_* variable of this
    shell (a database URL, a PostgreSQL data folder) would point them at the user's own
    database or data, which the bench then stops and deletes."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MAQUETTE_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def _scratch_project(settings: Settings, database: str) -> Settings:
    """A project folder of its own under <state>/bench: only a Prefect server (and its
    PostgreSQL), on free ports."""
    folder = bench_dir(settings) / f"prefect-{database}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = {
        "redis": {"port": free_port()},
        "orchestration": {
            "prefect_port": free_port(),
            "runner_port": free_port(),
            "postgres_port": free_port(),
            "database": database,
            "components": ["prefect"],
        },
    }
    (folder / "maquette.yaml").write_text(yaml.safe_dump(config))
    return load_settings(folder)


def _measure(
    settings: Settings, database: str, tasks: int, runs: int, console: Console
) -> dict[str, float]:
    scratch = _scratch_project(settings, database)
    console.print(f"  starting a Prefect server on {database} ...")
    try:
        platform.up(scratch, ["prefect"])
        _flow(scratch, 5)  # warm-up: the flow and task definitions are registered once
        results = []
        for i in range(runs):
            console.print(f"  {database}: flow {i + 1} of {runs} ...")
            results.append(_flow(scratch, tasks))
    finally:
        platform.down(scratch)
        data = postgres_server.data_dir(scratch) if database == "postgresql" else None
        # Only the scratch project's own PostgreSQL folder (derived from its state folder).
        if data is not None and scratch.orchestration.postgres_data is None:
            shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(scratch.project_dir, ignore_errors=True)
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def _flow(scratch: Settings | None, tasks: int, plain: bool = False) -> dict[str, float]:
    """Run the flow in a process of its own (against `scratch`'s server); its figures."""
    env = None
    if scratch is not None:
        env = {**_inherited(), **project_env(scratch), **prefect_client_env(scratch)}
    command = [sys.executable, "-m", "maquette.bench.prefect_tasks", str(tasks)]
    done = subprocess.run(
        [*command, *(["--plain"] if plain else [])],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the benchmark's flow failed:\n{done.stdout}{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def _inherited() -> dict[str, str]:
    """This shell's environment without its own Prefect or Maquette settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MAQUETTE_"))}
