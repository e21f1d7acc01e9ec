"""Nothing answered is lost: kill -9 the server, take Redis away, kill the drain mid-way (slow)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest

from maquette.config import Settings, load_settings
from maquette.data.redis_server import redis_server_binary, server_command, wait_until_ready
from maquette.features.layer import FeatureLayer
from maquette.serving import prediction_log as predictions
from maquette.serving.server import service_process
from tests.conftest import ROOT, free_port, make_project
from tests.test_serving import ROW, wait_ready

pytestmark = pytest.mark.slow


def _redis(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = server_command(redis_server_binary(), port, "127.0.0.1", data_dir, daemonize=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_ready(f"redis://127.0.0.1:{port}/0", 10, data_dir / "redis.log")
    return proc


def _service(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    return service_process(
        settings,
        "127.0.0.1",
        port,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_9(service: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and its workers: BentoML's workers run in sessions of their own, so
    killing the server's process group alone leaves an orphan worker still answering."""
    family = [service.pid] + [p.pid for p in psutil.Process(service.pid).children(recursive=True)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.wait(10)


def test_answers_survive_server_kill_redis_outage_and_drain_kills(
    tmp_path: Path, production, loaded_project: Settings
) -> None:
    redis_dir, redis_port = tmp_path / "redis", free_port()
    redis_dir.mkdir()
    redis_proc = _redis(redis_dir, redis_port)
    project = make_project(
        tmp_path / "p",
        f"redis://127.0.0.1:{redis_port}/0",
        paths={"offline_store": str(loaded_project.offline_store)},
        feast={"registry": str(loaded_project.registry_path)},
        predictions={"drain_batch": 40},
    )
    (project / "maquette.yaml").write_text(
        (project / "maquette.yaml")
        .read_text()
        .replace(
            str(project / ".maquette" / "aliases.json"),
            str(loaded_project.path(loaded_project.registry.aliases)),
        )
    )
    settings = load_settings(project)
    # An explicit window: the Feast registry is shared with other tests, so leave its end alone.
    FeatureLayer(settings).materialize(
        datetime(2013, 1, 1, tzinfo=UTC), datetime(2014, 1, 2, tzinfo=UTC)
    )
    port = free_port()
    service = _service(settings, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        answered = []
        with httpx.Client(timeout=10) as client:
            for _ in range(150):
                reply = client.post(f"{url}/predict", json={"rows": [ROW, ROW]})
                assert reply.status_code == 200
                answered += [a["prediction_id"] for a in reply.json()["predictions"]]
        _kill_9(service)  # no goodbye: the log must already hold them

        # Redis away: a clear 503, /readyz fails; back: the service recovers by itself.
        service = _service(settings, port)
        wait_ready(url)
        redis_proc.terminate()
        redis_proc.wait(10)
        down = httpx.post(f"{url}/predict", json={"rows": ROW}, timeout=15)
        assert (
            down.status_code == 503 and "Redis" in down.text and "maquette redis start" in down.text
        ), down.text
        assert httpx.get(f"{url}/readyz", timeout=15).status_code == 503
        redis_proc = _redis(redis_dir, redis_port)  # same folder: the AOF brings the stream back
        back = httpx.post(f"{url}/predict", json={"rows": ROW}, timeout=15)
        assert back.status_code == 200, back.text
        answered.append(back.json()["predictions"][0]["prediction_id"])
    finally:
        if service.poll() is None:
            _kill_9(service)

    # Drain with real kills at random moments, then once to the end.
    rng = random.Random(3)
    code = (
        "from maquette.config import load_settings; "
        "from maquette.serving import prediction_log as predictions; "
        f"predictions.drain(load_settings({str(project)!r}))"
    )
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
        time.sleep(rng.uniform(1.2, 3.0))
        proc.kill()
        proc.wait(10)
    predictions.drain(settings)
    assert predictions.pending(settings) == 0
    logged = predictions.read_predictions(settings)["prediction_id"].to_pylist()
    assert len(logged) == len(set(logged))  # de-duplicated
    assert set(answered) <= set(logged)  # nothing answered was lost
    redis_proc.terminate()
    redis_proc.wait(10)
