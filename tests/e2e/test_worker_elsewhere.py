"""Workers elsewhere (issue 21, item 5): the platform puts its deployments on a Prefect work
pool and runs no flow itself (`orchestration.local_worker: false`); a worker started apart from
it (`maquette worker`), from a copy of the project in another folder, as it would run on another
machine, picks up the scheduled drain and runs it from its own copy. Nothing drives the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from maquette.config import Settings, load_settings
from maquette.data import redis_server
from maquette.platform import components as platform
from maquette.platform.flows import prefect_auth
from maquette.platform.work_pool import ENTER_PROJECT
from tests.conftest import free_port, make_project
from tests.e2e.test_schedules_fire import DRAIN, EVERY_MINUTE, scheduled_runs
from tests.test_platform import drained_ids, log_predictions, wait_for

POOL = "maquette-elsewhere"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_worker_started_apart_runs_the_scheduled_drain_from_its_own_copy_of_the_project(
    tmp_path: Path,
) -> None:
    folder = make_project(
        tmp_path / "platform",
        None,
        redis={"port": free_port()},
        orchestration={
            "prefect_port": free_port(),
            "runner_port": free_port(),
            "components": ["redis", "prefect", "deployments"],
            "work_pool": POOL,
            "local_worker": False,
            "schedules": {
                "drain": EVERY_MINUTE,
                **dict.fromkeys(["materialize", "monitor", "batch_predict", "train"]),
            },
        },
    )
    settings = load_settings(folder)
    worker: subprocess.Popen[bytes] | None = None
    try:
        platform.up(settings)
        _deployments_point_into_no_checkout(settings, folder)

        # Another machine: its own copy of the project (no state folder), reaching the
        # platform's Redis and Prefect server through its settings.
        elsewhere = tmp_path / "elsewhere"
        shutil.copytree(folder, elsewhere, ignore=shutil.ignore_patterns(".maquette"))
        env = {
            **os.environ,
            "MAQUETTE_REDIS_URL": redis_server.store_url(settings),
            "MAQUETTE_ORCHESTRATION_PREFECT_AUTH": prefect_auth(settings),
            "MAQUETTE_ORCHESTRATION_RUNNER_PORT": str(free_port()),
        }
        log = (tmp_path / "worker.log").open("wb")
        command = [sys.executable, "-m", "maquette", "worker", "--project", str(elsewhere)]
        worker = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        copy = load_settings(elsewhere)

        ids = log_predictions(settings, 40)
        wait_for(
            lambda: (
                scheduled_runs(settings, DRAIN, ["COMPLETED", "FAILED", "CRASHED"])
                and set(ids) <= set(drained_ids(copy))
            ),
            300,
            lambda: (
                "the worker to run a scheduled drain; its log:\n"
                + (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
            ),
        )
        assert not scheduled_runs(settings, DRAIN, ["FAILED", "CRASHED"])
        assert sorted(drained_ids(copy)) == sorted(ids)  # each once, in the copy's folder
        assert drained_ids(settings) == []  # nothing ran on the platform's machine
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
        platform.down(settings)


def _deployments_point_into_no_checkout(settings: Settings, folder: Path) -> None:
    """Every deployment is on the pool, its entrypoint relative, no path, and its one pull
    step enters the worker's own project folder."""
    from prefect.client.orchestration import get_client

    with platform.prefect_api(settings), get_client(sync_client=True) as client:
        deployments = client.read_deployments()
    assert deployments, "nothing deployed"
    for deployment in deployments:
        assert deployment.work_pool_name == POOL, deployment.name
        assert deployment.path is None and deployment.pull_steps == [ENTER_PROJECT]
        assert deployment.entrypoint and deployment.entrypoint.startswith("flows/")
        assert str(folder) not in json.dumps(deployment.model_dump(mode="json"))
