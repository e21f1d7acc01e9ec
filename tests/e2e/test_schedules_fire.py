"""A schedule fires by itself: `maquette up` in a shell that exits, then nobody drives anything.

The drain runs on a one-minute cron; the test logs predictions into the project's Redis and
waits until the Prefect server reports a run *the scheduler* created Completed, and the
predictions are in Parquet. `up` runs with a PROMETHEUS_MULTIPROC_DIR that is deleted after it
exits, as Feast's temporary folder is: inherited by the runner, it killed every flow run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from maquette.config import load_settings
from maquette.platform import components as platform
from maquette.serving.prediction_log import PredictionLog
from tests.conftest import free_port, make_project

DRAIN = "drain/prediction-log"
EVERY_MINUTE = "* * * * *"


def _entry(prediction_id: str) -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    return {
        "prediction_id": prediction_id,
        "logged_at": now,
        "request_time": now,
        "model": "flight_delay",
        "version": "v1",
        "partition": None,
        "shadow": False,
        "prediction": 12.5,
        "decision": None,
        "latency_ms": 1.0,
        "entity": {"origin": "JFK"},
        "request": {},
        "features": {},
        "missing": [],
        "stale": [],
    }


def _drained_ids(folder: Path) -> list[str]:
    files = sorted(folder.rglob("*.parquet"))
    return [
        i for f in files for i in pq.read_table(f, columns=["prediction_id"]).column(0).to_pylist()
    ]


def _scheduled_runs(settings, state: str) -> list[object]:  # type: ignore[no-untyped-def]
    """Runs of the drain deployment that the scheduler created, in this state (e.g. COMPLETED)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    with platform.prefect_api(settings), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DRAIN)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state]))
            ),
            limit=50,
        )
    return [r for r in runs if r.auto_scheduled]


@pytest.mark.slow
def test_a_scheduled_drain_completes_after_up_has_exited(tmp_path: Path) -> None:
    folder = make_project(
        tmp_path / "project",
        None,
        redis={"port": free_port()},
        orchestration={
            "prefect_port": free_port(),
            "runner_port": free_port(),
            "components": ["redis", "prefect", "deployments"],
            "schedules": {
                "materialize": None,
                "drain": EVERY_MINUTE,
                "monitor": None,
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
        done = subprocess.run(up, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout + done.stderr
        shutil.rmtree(metrics)  # gone with the process that made it

        runner = {s.name: s for s in platform.status(settings)}["deployments"]
        assert runner.state == "running" and runner.pid
        assert "PROMETHEUS_MULTIPROC_DIR" not in psutil.Process(runner.pid).environ()

        ids = [uuid.uuid4().hex for _ in range(50)]
        PredictionLog(settings).append([_entry(i) for i in ids])
        folder_of_parquet = settings.path(settings.predictions.folder)

        # Nothing is driven from here on: the scheduler creates a run, the runner executes it.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            completed = _scheduled_runs(settings, "COMPLETED")
            if completed and set(ids) <= set(_drained_ids(folder_of_parquet)):
                break
            time.sleep(2)
        failed = _scheduled_runs(settings, "FAILED") + _scheduled_runs(settings, "CRASHED")
        assert not failed, failed
        assert _scheduled_runs(settings, "COMPLETED"), "no scheduled drain run completed"
        drained = _drained_ids(folder_of_parquet)
        assert sorted(drained) == sorted(ids)  # each once

        shown = subprocess.run(
            [sys.executable, "-m", "maquette", "status", "--project", str(folder)],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
            timeout=120,
        )
        line = next(x for x in shown.stdout.splitlines() if DRAIN in x)
        assert EVERY_MINUTE in line and "Completed" in line and "scheduled" in line, shown.stdout
        assert "scheduler is failing" not in shown.stdout, shown.stdout
    finally:
        platform.down(settings)
