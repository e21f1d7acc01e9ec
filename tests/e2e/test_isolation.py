"""Two projects up at the same time stay apart: each serves only its own models, logs only to its
own prediction stream, deploys only its own flows and reports only its own components (slow)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis as redis_py
import yaml

from maquette.config import Settings, load_settings
from maquette.data import redis_server
from maquette.platform import components as platform
from maquette.platform.deployments import flow_deployments
from maquette.serving.prediction_log import predictions_in
from tests.conftest import free_port, make_project
from tests.test_serving import ROW

pytestmark = pytest.mark.slow

# What each project runs: A's Redis is the session's (external, not supervised).
COMPONENTS = ["redis", "prefect", "deployments", "service"]
# Rare schedules (1 January): no flow run fires during the test and drains the prediction log.
RARE = {
    "materialize": "0 1 1 1 *",
    "drain": "0 2 1 1 *",
    "monitor": None,
    "batch_predict": "0 4 1 1 *",
    "train": "0 5 1 1 *",
}


def _free_ports(count: int) -> list[int]:
    """Distinct free ports (two quick free_port() calls may hand out the same one)."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


@pytest.fixture
def ports() -> list[int]:
    """Seven distinct free ports: A's Prefect, runner and service; B's Redis and the same three."""
    return _free_ports(7)


@pytest.fixture
def project_a(
    production: dict[str, str], loaded_project: Settings, ports: list[int]
) -> Iterator[Settings]:
    """The session's trained project (models in the session's BENTOML_HOME, Redis external),
    given free ports and rare schedules in its maquette.yaml; the file is restored afterwards."""
    file = loaded_project.project_dir / "maquette.yaml"
    original = file.read_text()
    config = yaml.safe_load(original)
    prefect, runner, service = ports[:3]
    config["orchestration"].update(
        prefect_port=prefect, runner_port=runner, components=COMPONENTS, schedules=RARE
    )
    config["serving"]["port"] = service
    file.write_text(yaml.safe_dump(config))
    settings = load_settings(loaded_project.project_dir)
    try:
        yield settings
    finally:
        with contextlib.suppress(Exception):
            platform.down(settings)
        file.write_text(original)


@pytest.fixture
def project_b(tmp_path: Path, ports: list[int]) -> Iterator[Settings]:
    """A fresh project: its own embedded Redis, ports and model store (empty)."""
    redis_port, prefect, runner, service = ports[3:]
    folder = make_project(
        tmp_path / "b",
        None,
        redis={"port": redis_port},
        registry={"bentoml_home": ".maquette/bentoml"},
        serving={"port": service},
        orchestration={
            "prefect_port": prefect,
            "runner_port": runner,
            "components": COMPONENTS,
            "schedules": RARE,
        },
    )
    settings = load_settings(folder)
    try:
        yield settings
    finally:
        platform.down(settings)


def _maquette(*args: str) -> subprocess.Popen[str]:
    """`maquette ARGS` in a process of its own, its output wide enough for a whole table row."""
    return subprocess.Popen(
        [sys.executable, "-m", "maquette", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )


def _finished(process: subprocess.Popen[str], timeout_s: float = 600) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout_s)
    return process.returncode, output


def _pids(settings: Settings) -> dict[str, int]:
    return {s.name: s.pid for s in platform.status(settings) if s.pid is not None}


def _urls(settings: Settings) -> list[str]:
    return [str(s.url) for s in platform.status(settings) if s.url]


def _environ(pid: int) -> dict[str, str]:
    return dict(psutil.Process(pid).environ())


def _service_url(settings: Settings) -> str:
    return f"http://{settings.serving.host}:{settings.serving.port}"


def _logged_ids(settings: Settings) -> set[str]:
    """prediction_id of every entry in the project's prediction-log stream, in its own Redis."""
    client = redis_py.Redis.from_url(redis_server.redis_url(settings))
    with client:
        entries = client.xrange(settings.predictions.stream)
    return {p["prediction_id"] for i, fields in entries for p in predictions_in(i, fields)}


def _served_deployments(settings: Settings) -> dict[str, dict[str, object]]:
    """FLOW/DEPLOYMENT -> parameters, as the project's own Prefect server has them."""
    from prefect.client.orchestration import get_client

    with platform.prefect_api(settings), get_client(sync_client=True) as client:
        return {
            f"{client.read_flow(d.flow_id).name}/{d.name}": d.parameters
            for d in client.read_deployments(limit=200)
        }


def test_two_projects_up_at_once_each_serve_log_and_schedule_only_their_own(
    production: dict[str, str], project_a: Settings, project_b: Settings
) -> None:
    a, b = project_a, project_b
    # Both come up at the same time, each from a `maquette up` of its own.
    ups = [_maquette("up", "--project", str(s.project_dir)) for s in (a, b)]
    for (code, output), s in zip([_finished(p) for p in ups], (a, b), strict=True):
        assert code == 0, f"up of {s.project_dir}:\n{output}"

    # A serves its own models; B's service, with an empty store of its own, serves none of A's.
    reply = httpx.post(f"{_service_url(a)}/predict", json={"rows": ROW}, timeout=30)
    assert reply.status_code == 200, reply.text
    (answer,) = reply.json()["predictions"]
    assert answer["model"] == production["flight_delay"]
    assert httpx.get(f"{_service_url(b)}/readyz", timeout=10).status_code != 200
    refused = httpx.post(
        f"{_service_url(b)}/predict", json={"rows": ROW, "model": "flight_delay"}, timeout=30
    )
    assert refused.status_code == 404, refused.text
    assert "no model named 'flight_delay' is served" in refused.json()["error"]
    assert "Served models: none" in refused.json()["remedy"], refused.text
    assert "late_arrival" not in refused.text

    # Every process of each project was given its own project folder, model store and Prefect
    # server, and no metrics folder of the process that ran `up` (Feast's, shared by both
    # projects and deleted with that process); the services' workers get BentoML's, not shared.
    homes = [os.environ["BENTOML_HOME"], str(b.project_dir / ".maquette" / "bentoml")]
    metrics: list[set[str]] = []
    for s, home in zip((a, b), homes, strict=True):
        for name, pid in _pids(s).items():
            if name == "redis":
                continue  # redis-server writes its process title over its environment
            env, where = _environ(pid), (name, str(s.project_dir))
            assert env.get("MAQUETTE_PROJECT_DIR") == str(s.project_dir), where
            assert env.get("BENTOML_HOME") == home, where
            assert env.get("PREFECT_API_URL") == platform.prefect_api_url(s), where
            assert [k for k in env if k.upper().startswith("PROMETHEUS_MULTIPROC")] == [], where
        workers = psutil.Process(_pids(s)["service"]).children(recursive=True)
        assert workers and all(w.environ().get("BENTOML_HOME") == home for w in workers)
        metrics.append({w.environ().get("PROMETHEUS_MULTIPROC_DIR", "") for w in workers} - {""})
    assert not metrics[0] & metrics[1]

    # A's prediction went to A's prediction log; B's log holds nothing.
    assert answer["prediction_id"] in _logged_ids(a)
    assert _logged_ids(b) == set()

    # Each Prefect server holds exactly the deployments its project's settings make (the same
    # names: both projects declare the demo's models), every one of them run in that project.
    for s in (a, b):
        served = _served_deployments(s)
        assert sorted(served) == sorted(f"{d.flow_name}/{d.name}" for d in flow_deployments(s))
        # No run parameter names a folder: each runner reads its own project's settings.
        assert not [p for p in served.values() if "project_dir" in p]

    # `maquette status` of each shows its own components: its pids and its own ports only.
    pids_a, pids_b = _pids(a), _pids(b)
    assert set(pids_a) == {"prefect", "deployments", "service"}
    assert set(pids_b) == {"redis", "prefect", "deployments", "service"}
    assert not set(pids_a.values()) & set(pids_b.values())
    for s, other, pids in ((a, b, pids_a), (b, a, pids_b)):
        code, shown = _finished(_maquette("status", "--project", str(s.project_dir)), 120)
        assert code == 0, shown
        assert all(url in shown for url in _urls(s)), shown
        assert not [url for url in _urls(other) if url in shown], shown
        assert all(str(pid) in shown for pid in pids.values()), shown

    # B going down leaves A running, untouched, and still serving.
    platform.down(b)
    assert {st.state for st in platform.status(b)} == {"stopped"}
    assert {st.name: st.state for st in platform.status(a)} == {
        "redis": "running",
        "prefect": "running",
        "deployments": "running",
        "service": "running",
    }
    assert _pids(a) == pids_a
    again = httpx.post(f"{_service_url(a)}/predict", json={"rows": ROW}, timeout=30)
    assert again.status_code == 200, again.text
    platform.down(a)
    assert {st.name: st.state for st in platform.status(a)} == {
        "redis": "running",  # the session's Redis: external, never A's to stop
        "prefect": "stopped",
        "deployments": "stopped",
        "service": "stopped",
    }
