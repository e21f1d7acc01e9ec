"""The platform's Prefect server and the deployments' runner, started as `maquette up` starts
them (`launch.component_command`), let in only clients holding the auth string, and the
deployments run nothing named by a run's parameters (paths, SQL); entity SQL is one SELECT
that can read the offline store only."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from maquette.config import Settings, load_settings
from maquette.errors import InvalidEntityFrame
from maquette.platform.flows import (
    csrf_headers,
    platform_prefect,
    prefect_api_client,
    prefect_api_url,
    prefect_auth,
)
from maquette.platform.launch import component_command
from maquette.serving import batch
from tests.conftest import free_port, make_project

EVIL = "http://evil.example"
FLOWS = ("materialize", "drain", "monitor", "batch_predict", "train")
# Parameters a run could once set: a folder whose flows/*.py the runner would execute, SQL run
# with every statement, folders written to.
UNSAFE = {"project_dir", "entities", "output", "output_dir"}


def _wait(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:.0f}s for {what}")
        time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start(settings: Settings, name: str, log: Path) -> subprocess.Popen[bytes]:
    command, env = component_command(settings, name)
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            env=env,
            cwd=settings.project_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def locked_platform(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Settings, subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """A project's Prefect server and deployments' runner, each run as `maquette up` runs it."""
    folder = make_project(
        tmp_path_factory.mktemp("locked") / "project",
        None,
        orchestration={
            "prefect_port": free_port(),
            "runner_port": free_port(),
            # Deployed, run on demand only: no scheduled run (without Redis) during the test.
            "schedules": dict.fromkeys(FLOWS),
        },
    )
    settings = load_settings(folder)
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = _start(settings, "prefect", logs / "prefect.log")
    runner = None
    try:
        _wait(lambda: _answers(f"{prefect_api_url(settings)}/health"), 120, "the Prefect server")
        runner = _start(settings, "deployments", logs / "deployments.log")
        health = f"http://{settings.orchestration.host}:{settings.orchestration.runner_port}"
        _wait(lambda: _answers(f"{health}/health"), 180, "the runner's /health")
        yield settings, server, runner
    finally:
        if runner is not None:
            _stop(runner)
        _stop(server)


def test_the_prefect_api_refuses_a_client_without_the_auth_string(
    locked_platform: tuple[Settings, Any, Any],
) -> None:
    settings = locked_platform[0]
    api = prefect_api_url(settings)
    assert httpx.get(f"{api}/admin/settings").status_code == 401
    # No CSRF token without the auth string, and no change (a flow run...) without a token.
    assert httpx.get(f"{api}/csrf-token", params={"client": "x"}).status_code == 401
    assert httpx.post(f"{api}/flow_runs/", json={"flow_id": "x"}).status_code in (401, 403)
    wrong = {"Authorization": "Basic d3Jvbmc="}  # "wrong"
    assert httpx.get(f"{api}/admin/settings", headers=wrong).status_code == 401
    # The health check stays open: `maquette up` and `status` ask it before anything else.
    assert httpx.get(f"{api}/health").status_code == 200
    with prefect_api_client(settings) as client:
        assert client.get("admin/settings").status_code == 200
        # CSRF is on: a change without a token is refused, even with the auth string.
        assert client.post("flows/filter", json={}).status_code == 403
        answer = client.post("flows/filter", json={}, headers=csrf_headers(client))
        assert answer.status_code == 200 and isinstance(answer.json(), list)


def test_a_page_on_another_origin_may_not_call_the_api(
    locked_platform: tuple[Settings, Any, Any],
) -> None:
    settings = locked_platform[0]
    api = prefect_api_url(settings)

    def preflight(origin: str) -> httpx.Response:
        headers = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        return httpx.options(f"{api}/flow_runs/", headers=headers)

    refused = preflight(EVIL)
    assert refused.headers.get("access-control-allow-origin") not in (EVIL, "*"), refused
    own = preflight(settings.orchestration.prefect_url)
    assert own.headers.get("access-control-allow-origin") == settings.orchestration.prefect_url
    # The UI knows it must ask for the auth string (its login page) and send CSRF tokens.
    ui = httpx.get(f"{settings.orchestration.prefect_url}/ui-settings").json()
    assert ui["auth"] == "BASIC" and ui["csrf_enabled"] is True


def test_the_auth_string_is_private_and_on_no_command_line(
    locked_platform: tuple[Settings, subprocess.Popen[bytes], subprocess.Popen[bytes]],
) -> None:
    settings, server, runner = locked_platform
    secret = prefect_auth(settings)
    path = settings.state_dir / "secrets" / "prefect_auth"
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    family = [psutil.Process(p.pid) for p in (server, runner)]
    family += [c for p in list(family) for c in p.children(recursive=True)]
    for process in family:
        assert secret not in " ".join(process.cmdline()), process.cmdline()


def test_the_runner_port_answers_health_and_nothing_else(
    locked_platform: tuple[Settings, Any, subprocess.Popen[bytes]],
) -> None:
    settings, _, runner = locked_platform
    o = settings.orchestration
    base = f"http://{o.host}:{o.runner_port}"
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.post(f"{base}/shutdown").status_code in (404, 405)
    assert httpx.get(f"{base}/run_count").status_code == 404
    time.sleep(1)
    assert runner.poll() is None and httpx.get(f"{base}/health").status_code == 200


def _deployments(settings: Settings) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    with (
        platform_prefect(settings, prefect_api_url(settings)),
        get_client(sync_client=True) as client,
    ):
        found = client.read_deployments(limit=100)
        return {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in found}


def test_deployments_take_no_path_or_sql_parameters(
    locked_platform: tuple[Settings, Any, Any],
) -> None:
    deployments = _deployments(locked_platform[0])
    assert {"drain/prediction-log", "batch_predict/flight_delay", "train/flight_delay"} <= set(
        deployments
    )
    for name, deployment in deployments.items():
        taken = set(deployment.parameter_openapi_schema["properties"])
        assert not taken & UNSAFE, (name, taken)
        assert not set(deployment.parameters) & UNSAFE, (name, deployment.parameters)
        assert deployment.enforce_parameter_schema, name
    assert deployments["batch_predict/flight_delay"].parameters == {
        "model": "flight_delay@production"
    }


@pytest.mark.parametrize(
    "parameters",
    [
        {"model": "flight_delay@production", "project_dir": "/tmp"},
        {"model": "flight_delay@production", "entities": "SELECT 1; COPY (SELECT 1) TO 'x.csv'"},
    ],
)
def test_a_run_with_a_path_or_sql_parameter_is_refused(
    locked_platform: tuple[Settings, Any, Any], parameters: dict[str, str]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    settings = locked_platform[0]
    deployment = _deployments(settings)["batch_predict/flight_delay"]
    with (
        platform_prefect(settings, prefect_api_url(settings)),
        get_client(sync_client=True) as client,
    ):
        with pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        assert refused.value.response.status_code == 409
        assert "Additional properties" in refused.value.response.text


def test_a_run_that_turns_schema_enforcement_off_fails_before_running_anything(
    locked_platform: tuple[Settings, Any, Any],
) -> None:
    from prefect.client.orchestration import get_client

    settings = locked_platform[0]
    written = settings.project_dir / "flows" / "owned.py"
    sql = f"SELECT 1; COPY (SELECT 'import os') TO '{written}'"
    deployment = _deployments(settings)["batch_predict/flight_delay"]
    with prefect_api_client(settings) as http:
        created = http.post(
            f"deployments/{deployment.id}/create_flow_run",
            headers=csrf_headers(http),
            json={
                "parameters": {"model": "flight_delay@production", "entities": sql},
                "enforce_parameter_schema": False,
            },
        )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    with (
        platform_prefect(settings, prefect_api_url(settings)),
        get_client(sync_client=True) as client,
    ):

        def final() -> bool:
            state = client.read_flow_run(run_id).state
            return state is not None and state.is_final()

        _wait(final, 180, "the runner to take up the run")
        state = client.read_flow_run(run_id).state
    # Refused by the engine for the parameter, before the flow (or its model lookup) ran.
    assert state is not None and not state.is_completed(), state
    log = (settings.state_dir / "logs" / "deployments.log").read_text()
    assert "SignatureMismatchError" in log and "['model', 'entities']" in log
    assert not written.exists()


# ------------------------------------------------------------------ entity SQL


def test_entity_sql_of_more_than_one_statement_is_refused_and_writes_nothing(
    loaded_project: Settings, tmp_path: Path
) -> None:
    target = tmp_path / "x.csv"
    with pytest.raises(InvalidEntityFrame, match="2 statements"):
        batch.entity_table(loaded_project, f"SELECT 1; COPY (SELECT 1) TO '{target}'")
    assert not target.exists()


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT 1) TO '{target}'",
        "WITH q AS (SELECT 1) INSERT INTO flights SELECT * FROM q",
        "ATTACH '{target}' AS other",
    ],
)
def test_entity_sql_that_is_not_a_select_is_refused(
    loaded_project: Settings, tmp_path: Path, sql: str
) -> None:
    target = tmp_path / "x.csv"
    with pytest.raises(InvalidEntityFrame, match="SELECT"):
        batch.entity_table(loaded_project, sql.format(target=target))
    assert not target.exists()


def test_entity_sql_reads_the_offline_store_and_no_other_file(
    loaded_project: Settings, tmp_path: Path
) -> None:
    rows = batch.entity_table(
        loaded_project,
        "SELECT * FROM flights WHERE event_timestamp >= '2013-12-01' "
        "AND event_timestamp < '2013-12-02'",
    )
    assert rows.num_rows > 900
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    with pytest.raises(Exception, match="disabled by configuration"):
        batch.entity_table(loaded_project, f"SELECT * FROM read_csv('{outside}')")
