"""A schedule fires by itself: `maquette up` in a shell that exits, then nobody drives anything.

The drain runs on a one-minute cron; the test logs predictions into the project's Redis and
waits until the Prefect server reports a run *the scheduler* created Completed, and the
predictions are in Parquet. `up` runs with a PROMETHEUS_MULTIPROC_DIR that is deleted after it
exits, as Feast's temporary folder is: inherited by the runner, it killed every flow run.

Meanwhile materialize and monitor, due every minute too, are held paused (as the demo holds
them while it trains and replays) from before the runner starts: they get no run until released,
then they do.

Run twice: with the Prefect server's state in SQLite (the default) and in the PostgreSQL the
platform runs for it (`orchestration.database: postgresql`), which, killed, comes back by
itself with what the server had stored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from maquette.config import Settings, load_settings
from maquette.data import postgres_server
from maquette.platform import components as platform
from tests.conftest import free_port, make_project
from tests.test_platform import drained_ids, log_predictions, wait_for

DRAIN = "drain/prediction-log"
MATERIALIZE = "materialize/incremental"
MONITOR = "monitor/models"
EVERY_MINUTE = "* * * * *"


def scheduled_runs(settings: Settings, name: str, states: list[str] | None = None) -> list[Any]:
    """Runs of deployment `name` that the scheduler created (in one of `states`, if given),
    the earliest 200 by expected start (the scheduler queues up to 100 ahead)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    by_state = FlowRunFilterState(type=FlowRunFilterStateType(any_=states)) if states else None
    with platform.prefect_api(settings), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=by_state),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    return [r for r in runs if r.auto_scheduled]


def _paused(settings: Settings, name: str) -> bool:
    from prefect.client.orchestration import get_client

    with platform.prefect_api(settings), get_client(sync_client=True) as client:
        return bool(client.read_deployment_by_name(name).paused)


@pytest.mark.slow
@pytest.mark.timeout(900)  # two `up`s (400 s at most), the scheduled run (240 s), status (120 s)
@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_scheduled_drain_completes_after_up_has_exited_while_held_schedules_create_no_run(
    tmp_path: Path, database: str
) -> None:
    folder = make_project(
        tmp_path / "project",
        None,
        redis={"port": free_port()},
        orchestration={
            "prefect_port": free_port(),
            "runner_port": free_port(),
            "postgres_port": free_port(),
            "database": database,
            "components": ["redis", "prefect", "deployments"],
            "schedules": {
                "materialize": EVERY_MINUTE,
                "drain": EVERY_MINUTE,
                "monitor": EVERY_MINUTE,
                "batch_predict": None,
                "train": None,
            },
        },
    )
    settings = load_settings(folder)
    metrics = tmp_path / "feast-metrics"  # what Feast points PROMETHEUS_MULTIPROC_DIR at
    metrics.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    up = [sys.executable, "-m", "maquette", "up", "--project", str(folder)]
    try:
        first = [*up, "--component", "redis", "--component", "prefect"]
        done = subprocess.run(first, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout + done.stderr
        # Held before the runner starts, as the demo holds them: the runner creates them
        # paused (a name not deployed at all is skipped).
        with platform.schedules_paused(settings, [MATERIALIZE, MONITOR, "nothing/deployed"]):
            done = subprocess.run(up, env=env, capture_output=True, text=True, timeout=400)
            assert done.returncode == 0, done.stdout + done.stderr
            shutil.rmtree(metrics)  # gone with the process that made it

            runner = {s.name: s for s in platform.status(settings)}["deployments"]
            assert runner.state == "running" and runner.pid
            assert "PROMETHEUS_MULTIPROC_DIR" not in psutil.Process(runner.pid).environ()
            # The scheduler has been round since the runner deployed them: the drain has runs.
            wait_for(lambda: scheduled_runs(settings, DRAIN), 120, "the drain's scheduled runs")
            _held_ones_have_no_run(settings)
            _a_scheduled_drain_completes(settings)
            _held_ones_have_no_run(settings)  # not even once a run of the same cron has run
            if database == "postgresql":
                _a_killed_postgres_comes_back_with_the_runs(settings)

        # Released, they are active again and the scheduler gives them runs.
        for name in (MATERIALIZE, MONITOR):
            assert not _paused(settings, name), f"{name} still paused once released"
            wait_for(lambda n=name: scheduled_runs(settings, n), 120, f"{name}'s scheduled runs")
    finally:
        platform.down(settings)
        if database == "postgresql":
            shutil.rmtree(postgres_server.data_dir(settings), ignore_errors=True)


def _cells(line: str) -> list[str]:
    """The cells of a row of `maquette status`'s table (the first and last are its borders)."""
    return [cell.strip() for cell in line.split("│")]


def _a_killed_postgres_comes_back_with_the_runs(settings: Settings) -> None:
    """SIGKILL of the PostgreSQL: the supervisor starts it again, nobody asking, and the
    Prefect server reads the runs it stored before (crash recovery from its WAL)."""
    before = {s.name: s for s in platform.status(settings)}["postgres"]
    assert before.state == "running" and before.pid, before
    completed = len(scheduled_runs(settings, DRAIN, ["COMPLETED"]))
    psutil.Process(before.pid).kill()

    def back() -> bool:
        now = {s.name: s for s in platform.status(settings)}["postgres"]
        return now.state == "running" and now.restarts >= 1 and now.pid != before.pid

    wait_for(back, 120, "the supervisor to restart the killed PostgreSQL")
    wait_for(
        lambda: len(scheduled_runs(settings, DRAIN, ["COMPLETED"])) >= completed,
        120,
        "the Prefect server to read its runs from the restarted PostgreSQL",
    )


def _held_ones_have_no_run(settings: Settings) -> None:
    for name in (MATERIALIZE, MONITOR):
        assert _paused(settings, name), f"{name} deployed active while held"
        assert not scheduled_runs(settings, name), f"{name} got runs while held"


def _a_scheduled_drain_completes(settings: Settings) -> None:
    """Predictions logged now reach Parquet through a run the scheduler starts, nobody driving;
    `maquette status` shows that run."""
    ids = log_predictions(settings, 50)
    wait_for(
        lambda: (
            scheduled_runs(settings, DRAIN, ["COMPLETED", "FAILED", "CRASHED"])
            and set(ids) <= set(drained_ids(settings))
        ),
        240,
        "a scheduled drain run to finish with the logged predictions in Parquet",
    )
    failed = scheduled_runs(settings, DRAIN, ["FAILED", "CRASHED"])
    assert not failed, failed
    assert scheduled_runs(settings, DRAIN, ["COMPLETED"]), "no scheduled drain run completed"
    assert sorted(drained_ids(settings)) == sorted(ids)  # each once

    shown = subprocess.run(
        [sys.executable, "-m", "maquette", "status", "--project", str(settings.project_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )
    line = next(x for x in shown.stdout.splitlines() if DRAIN in x)
    assert EVERY_MINUTE in line and "Completed" in line and "scheduled" in line, shown.stdout
    assert "scheduler is failing" not in shown.stdout, shown.stdout
    kept = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[settings.orchestration.database]
    rows = {cells[1]: cells for x in shown.stdout.splitlines() if len(cells := _cells(x)) > 2}
    assert f"state in {kept}" in rows["prefect"][-2], shown.stdout
    if kept == "PostgreSQL":  # its own line: running, where its data is, its password hidden
        assert rows["postgres"][2] == "running", shown.stdout
        assert "embedded PostgreSQL 1" in rows["postgres"][-2], shown.stdout
        assert postgres_server.password(settings) not in shown.stdout
