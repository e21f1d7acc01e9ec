"""The platform's Prefect server, read and used: schedules in `maquette status`, the scheduler's
errors from its log, and flow commands that run on the server (or plainly when it is down).

One real `prefect server start` on a free port serves the module, its home in a temp folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from typer.testing import CliRunner

from maquette.cli import app
from maquette.config import Settings, load_settings
from maquette.platform.flows import platform_prefect, project_flow, project_of_flows
from maquette.platform.schedules import (
    DeploymentSchedule,
    deployment_schedules,
    scheduler_errors,
    scheduler_errors_in,
)
from tests.conftest import free_port, make_project

FAILING_LOG = Path(__file__).parent / "data" / "prefect_scheduler_failing.log"
BULK_DML = "InvalidRequestError: Can't evaluate bulk DML statement; please supply a bulk_dml"


def _clean_env(home: Path) -> dict[str, str]:
    """This environment without any Prefect setting, HOME in a temp folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


@dataclass(frozen=True)
class PrefectServer:
    port: int
    log: Path


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real Prefect server on a free loopback port, PREFECT_HOME in a temp folder."""
    home = tmp_path_factory.mktemp("prefect-server")
    running = PrefectServer(free_port(), home / "server.log")
    env = {**_clean_env(home), "PREFECT_HOME": str(home / ".prefect-server")}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with running.log.open("wb") as log:
        server = subprocess.Popen(
            [*command, "--port", str(running.port)], stdout=log, stderr=log, env=env
        )
    try:
        deadline = time.monotonic() + 180
        while not _answers(running.port):
            assert server.poll() is None, running.log.read_text()
            assert time.monotonic() < deadline, "the Prefect server did not answer in 180 s"
            time.sleep(0.5)
        yield running
    finally:
        try:
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)  # the flow runs' logs, before their server goes
        finally:
            server.terminate()
            server.wait(30)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).is_success
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, running_redis: str, prefect_server: PrefectServer
) -> Settings:
    """A project whose orchestration.prefect_port is the running server's."""
    folder = tmp_path_factory.mktemp("platform")
    port = {"prefect_port": prefect_server.port}
    return load_settings(make_project(folder, running_redis, orchestration=port))


def _deploy(settings: Settings, name: str, cron: str | None) -> Any:
    """A deployment of the project's drain flow on the server (no runner serves it)."""
    from prefect.schedules import Cron

    api_url = f"{settings.orchestration.prefect_url}/api"
    with platform_prefect(settings, api_url):
        drain = project_flow(settings, "drain")
        schedules = [Cron(cron, timezone="UTC")] if cron else []
        # No parameters: a flow reads its project from the runner's MAQUETTE_PROJECT_DIR.
        return drain.to_deployment(name, schedules=schedules).apply()


def _schedule(settings: Settings, name: str) -> DeploymentSchedule:
    return next(s for s in deployment_schedules(settings) if s.name == name)


def test_a_cron_deployment_gets_its_next_run_from_the_prefect_scheduler(
    platform: Settings, prefect_server: PrefectServer
) -> None:
    _deploy(platform, "every-minute", "* * * * *")
    deadline = time.monotonic() + 120
    while (found := _schedule(platform, "drain/every-minute")).next_run is None:
        errors = scheduler_errors_in(prefect_server.log.read_text())
        assert time.monotonic() < deadline, f"no run scheduled in 120 s; scheduler errors: {errors}"
        time.sleep(2)
    assert found.crons == ("* * * * *",) and found.timezone == "UTC" and not found.paused
    assert found.last_run is None and found.last_scheduled_completed is None
    assert scheduler_errors_in(prefect_server.log.read_text()) == []


def test_a_run_the_scheduler_created_shows_as_scheduled_once_completed(
    platform: Settings,
) -> None:
    from prefect.client.orchestration import get_client

    _deploy(platform, "every-minute", "* * * * *")
    deadline = time.monotonic() + 120
    while (waiting := _schedule(platform, "drain/every-minute")).next_run is None:
        assert time.monotonic() < deadline, "no run scheduled in 120 s"
        time.sleep(2)
    api_url = f"{platform.orchestration.prefect_url}/api"
    with platform_prefect(platform, api_url), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("drain/every-minute")
        scheduled = _earliest_scheduled(client, deployment.id)
        assert scheduled.auto_scheduled and scheduled.expected_start_time == waiting.next_run
        _run_as_a_runner_would(platform, scheduled)
        ran = client.read_flow_run(scheduled.id)
    found = _schedule(platform, "drain/every-minute")
    assert found.last_run is not None
    assert (found.last_run.state, found.last_run.scheduled) == ("Completed", True)
    assert found.last_scheduled_completed == ran.end_time


def _earliest_scheduled(client: Any, deployment_id: Any) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=1,
    )[0]


def _run_as_a_runner_would(settings: Settings, flow_run: Any) -> None:
    """Execute a flow run of the drain deployment in this process, as a runner picking it up."""
    from prefect.flow_engine import run_flow

    flow = project_flow(settings, "drain")
    with project_of_flows(settings):  # the runner's project: its environment names it
        state = run_flow(flow, flow_run, flow_run.parameters, return_type="state")
    assert state.is_completed()  # type: ignore[union-attr]


def test_a_run_started_by_hand_shows_as_the_last_run_by_hand(platform: Settings) -> None:
    from prefect.client.orchestration import get_client

    deployment_id = _deploy(platform, "on-demand", None)
    api_url = f"{platform.orchestration.prefect_url}/api"
    with platform_prefect(platform, api_url), get_client(sync_client=True) as client:
        _run_as_a_runner_would(platform, client.create_flow_run_from_deployment(deployment_id))
    found = _schedule(platform, "drain/on-demand")
    assert found.last_run is not None
    assert (found.last_run.state, found.last_run.scheduled) == ("Completed", False)
    assert found.crons == () and found.next_run is None
    assert found.last_scheduled_completed is None  # a run by hand is not a scheduled one


def test_status_shows_each_deployment_and_a_failing_scheduler(
    platform: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maquette.cli import options

    monkeypatch.setattr(options.console, "width", 200)  # no cell folded over two lines
    _deploy(platform, "on-demand", None)
    logs = platform.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "prefect.log").write_text(FAILING_LOG.read_text())
    try:
        result = CliRunner().invoke(app, ["status", "--project", str(platform.project_dir)])
    finally:
        (logs / "prefect.log").unlink()
    text = " ".join(result.output.split())
    assert "drain/on-demand" in text and "on demand" in text
    assert "Prefect scheduler is failing" in text and "x2" in text
    assert str(logs / "prefect.log") in result.output.replace("\n", "")


def test_schedules_of_a_project_whose_server_is_down_are_empty(tmp_path: Path) -> None:
    folder = make_project(tmp_path, None, orchestration={"prefect_port": free_port()})
    assert deployment_schedules(load_settings(folder)) == []


def test_scheduler_errors_count_each_error_since_the_server_last_started() -> None:
    # A real log: two starts, the scheduler failing after each (SQLAlchemy 2.1 under Prefect 3.8).
    errors = scheduler_errors_in(FAILING_LOG.read_text())
    assert len(errors) == 1 and errors[0].startswith(BULK_DML) and errors[0].endswith(" x2")


def test_scheduler_errors_of_a_clean_start_are_none(tmp_path: Path) -> None:
    restarted = FAILING_LOG.read_text() + "\n--- maquette up: starting prefect at later\n"
    assert scheduler_errors_in(restarted) == []
    settings = load_settings(make_project(tmp_path, None))
    assert scheduler_errors(settings) == []  # no log yet


def test_drain_on_a_running_platform_is_a_completed_flow_run_on_its_server(
    platform: Settings, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    project = str(platform.project_dir)
    done = _maquette(_clean_env(tmp_path), "predictions", "drain", "--project", project)
    assert done.returncode == 0, done.stderr
    found = re.search(r"/runs/flow-run/([0-9a-f-]{36})", done.stderr.replace("\n", ""))
    assert found, done.stderr
    api_url = f"{platform.orchestration.prefect_url}/api"
    with platform_prefect(platform, api_url), get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(found.group(1)))
        flow = client.read_flow(run.flow_id)
    assert flow.name == "drain" and run.state is not None and run.state.is_completed()
    assert not (tmp_path / ".prefect").exists()  # nothing in the user's Prefect home


def test_drain_without_the_platform_runs_plainly_and_leaves_no_prefect_home(
    running_redis: str, tmp_path: Path
) -> None:
    down = {"prefect_port": free_port()}
    project = make_project(tmp_path / "project", running_redis, orchestration=down)
    home = tmp_path / "home"
    done = _maquette(_clean_env(home), "predictions", "drain", "--project", str(project))
    assert done.returncode == 0, done.stderr
    assert "files" in done.stdout  # the plain call's summary
    assert "platform not up: ran without Prefect" in " ".join(done.stderr.split())
    assert not (home / ".prefect").exists()


def test_incremental_materialize_on_a_running_platform_is_a_flow_run_a_window_is_not(
    loaded_project: Settings, prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAQUETTE_ORCHESTRATION_PREFECT_PORT", str(prefect_server.port))
    project = ["--project", str(loaded_project.project_dir)]
    incremental = CliRunner().invoke(
        app, ["features", "materialize", "--end", "2014-01-02", *project]
    )
    assert incremental.exit_code == 0, incremental.output
    text = " ".join(incremental.output.split())
    assert "materialize flow run on the platform's Prefect" in text and "plane" in text
    window = ["--start", "2013-12-31", "--end", "2014-01-02", "--view", "plane"]
    windowed = CliRunner().invoke(app, ["features", "materialize", *window, *project])
    assert windowed.exit_code == 0, windowed.output
    assert "flow run" not in windowed.output and "platform not up" not in windowed.output


@pytest.mark.slow
def test_train_and_predict_batch_on_a_running_platform_are_flow_runs(
    production: dict[str, str],
    loaded_project: Settings,
    prefect_server: PrefectServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MAQUETTE_ORCHESTRATION_PREFECT_PORT", str(prefect_server.port))
    project = ["--project", str(loaded_project.project_dir)]
    trained = CliRunner().invoke(app, ["train", "late_arrival", "--trials", "1", *project])
    assert trained.exit_code == 0, trained.output
    assert "train flow run on the platform's Prefect" in " ".join(trained.output.split())
    day = "SELECT * FROM flights WHERE event_timestamp >= '2013-12-01' AND event_timestamp < '2013-12-02'"
    output = tmp_path / "scored.parquet"
    batch = ["predict-batch", day, "--model", "flight_delay@production", "--output", str(output)]
    scored = CliRunner().invoke(app, [*batch, *project])
    assert scored.exit_code == 0, scored.output
    text = " ".join(scored.output.split())
    # Entities and an output path are not a deployment's parameters (whoever reaches Prefect
    # would choose them): a batch by hand scores in this process.
    assert production["flight_delay"] in text and "flow run" not in text
    assert output.is_file()


def _maquette(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "maquette", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
