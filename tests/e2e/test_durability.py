"""Nothing answered is lost: kill -9 the server, take Redis away, kill the drain between
writing a file and acknowledging it (slow)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pyarrow.parquet as pq
import pytest
import redis

from maquette.config import Settings, load_settings
from maquette.data.redis_server import redis_server_binary, server_command, wait_until_ready
from maquette.faults import CRASH_AT
from maquette.features.layer import FeatureLayer
from maquette.serving import prediction_log as predictions
from maquette.serving.server import service_process
from tests.conftest import ROOT, free_port, make_project
from tests.test_serving import ROW, wait_ready

pytestmark = pytest.mark.slow
# A service is ready in ~20 s; on a machine shared with other jobs it took 85 s.
STARTUP_S = 240
# Rows per request: the log holds one entry per request and drain_batch counts entries.
PER_REQUEST = 2


def redis_process(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """A redis-server of the test's own (AOF on, as the platform runs it): free to kill.

    `appendfsync always`: with `everysec`, while an fsync is slow Redis may answer a write it
    has not yet written to the AOF, and a kill then loses it (README, "What survives a crash";
    seen on a loaded CI machine). These tests assert that nothing acknowledged is lost."""
    cmd = server_command(
        redis_server_binary(), port, "127.0.0.1", data_dir, daemonize=False, appendfsync="always"
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_ready(f"redis://127.0.0.1:{port}/0", 10, data_dir / "redis.log")
    return proc


def service_in_own_session(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    return service_process(
        settings,
        "127.0.0.1",
        port,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_9(service: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and its workers: BentoML's workers run in sessions of their own, so
    killing the server's process group alone leaves an orphan worker still answering."""
    family = [service.pid] + [p.pid for p in psutil.Process(service.pid).children(recursive=True)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.wait(10)


def project_on(
    folder: Path, redis_url: str, loaded_project: Settings, **prediction_log: object
) -> Path:
    """A project on its own Redis, sharing the session's data, Feast registry and aliases."""
    project = make_project(
        folder,
        redis_url,
        paths={"offline_store": str(loaded_project.offline_store)},
        feast={"registry": str(loaded_project.registry_path)},
        predictions=prediction_log,
    )
    (project / "maquette.yaml").write_text(
        (project / "maquette.yaml")
        .read_text()
        .replace(
            str(project / ".maquette" / "aliases.json"),
            str(loaded_project.path(loaded_project.registry.aliases)),
        )
    )
    return project


def test_answers_survive_server_kill_redis_outage_and_drain_kills(
    tmp_path: Path, production, loaded_project: Settings
) -> None:
    redis_dir, redis_port = tmp_path / "redis", free_port()
    redis_dir.mkdir()
    redis_proc = redis_process(redis_dir, redis_port)
    try:
        project = project_on(
            tmp_path / "p", f"redis://127.0.0.1:{redis_port}/0", loaded_project, drain_batch=40
        )
        settings = load_settings(project)
        # An explicit window: the Feast registry is shared with other tests, so leave its end alone.
        FeatureLayer(settings).materialize(
            datetime(2013, 1, 1, tzinfo=UTC), datetime(2014, 1, 2, tzinfo=UTC)
        )
        port = free_port()
        service = service_in_own_session(settings, port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, STARTUP_S)
            answered = []
            with httpx.Client(timeout=10) as client:
                for _ in range(150):
                    reply = client.post(f"{url}/predict", json={"rows": [ROW] * PER_REQUEST})
                    assert reply.status_code == 200
                    answered += [a["prediction_id"] for a in reply.json()["predictions"]]
            kill_9(service)  # no goodbye: the log must already hold them

            # Redis away: a clear 503, /readyz fails; back: the service recovers by itself.
            service = service_in_own_session(settings, port)
            wait_ready(url, STARTUP_S)
            redis_proc.terminate()
            redis_proc.wait(10)
            down = httpx.post(f"{url}/predict", json={"rows": ROW}, timeout=15)
            assert (
                down.status_code == 503
                and "Redis" in down.text
                and "maquette redis start" in down.text
            ), down.text
            assert httpx.get(f"{url}/readyz", timeout=15).status_code == 503
            # Same folder: the AOF brings the stream back.
            redis_proc = redis_process(redis_dir, redis_port)
            back = httpx.post(f"{url}/predict", json={"rows": ROW}, timeout=15)
            assert back.status_code == 200, back.text
            answered.append(back.json()["predictions"][0]["prediction_id"])
        finally:
            if service.poll() is None:
                kill_9(service)

        _drain_with_kills_between_writing_and_acknowledging(project, settings, answered)
    finally:
        redis_proc.terminate()  # whatever failed: no redis-server outlives the test
        redis_proc.wait(10)


# Each drain below dies where MAQUETTE_CRASH_AT says: the Nth time a batch's Parquet file is
# written and fsynced but not yet acknowledged (a redelivered batch reaches the point too).
DRAIN_CODE = (
    "import sys; "
    "from maquette.config import load_settings; "
    "from maquette.serving import prediction_log as predictions; "
    "settings = load_settings(sys.argv[1]); "
    "settings.predictions.drain_batch = int(sys.argv[2]); "
    "predictions.drain(settings)"
)


def _drain_killed_at(project: Path, nth: int, batch: int) -> None:
    env = {**os.environ, CRASH_AT: f"drain.written:{nth}"}
    done = subprocess.run(
        [sys.executable, "-c", DRAIN_CODE, str(project), str(batch)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    said = done.stderr.decode()
    assert done.returncode == -signal.SIGKILL, f"the drain was not killed:\n{said[-3000:]}"
    assert f"crash point drain.written reached ({nth}): SIGKILL" in said, said[-3000:]


def _ids_on_disk(settings: Settings) -> list[str]:
    """Prediction ids in every drained Parquet file, copies included (no de-duplication)."""
    folder = settings.path(settings.predictions.folder)
    ids: list[str] = []
    for path in sorted(folder.glob("date=*/model=*/*.parquet")):
        ids += pq.read_table(path, columns=["prediction_id"])["prediction_id"].to_pylist()
    return ids


def _unacknowledged(settings: Settings) -> list[str]:
    """Prediction ids of the entries the drain has read but not acknowledged (each entry is
    a request's: PER_REQUEST predictions)."""
    client = redis.Redis.from_url(str(settings.redis.url))
    stream = settings.predictions.stream
    pending = client.xpending_range(stream, predictions.GROUP, min="-", max="+", count=10_000)
    ids = [p["message_id"] for p in pending]
    entries = [client.xrange(stream, i, i)[0] for i in ids]
    return [p["prediction_id"] for i, f in entries for p in predictions.predictions_in(i, f)]


def _drain_with_kills_between_writing_and_acknowledging(
    project: Path, settings: Settings, answered: list[str]
) -> None:
    batch = settings.predictions.drain_batch
    # Killed after writing batch 1; then after re-writing 1 and writing 2; after re-writing 2
    # and writing 3; then while re-writing 3 (a kill during the redelivery itself).
    for nth in (1, 2, 2, 1):
        _drain_killed_at(project, nth, batch)
        waiting = _unacknowledged(settings)
        on_disk = _ids_on_disk(settings)
        # Died between the two: the batch it read is in a file, and Redis still holds it.
        assert len(waiting) == batch * PER_REQUEST, f"{len(waiting)} predictions unacknowledged"
        assert set(waiting) <= set(on_disk), "an unacknowledged entry is not on disk"
    # A redelivered batch of the same size is rewritten to the same file (named by its stream
    # ids): the kills above left no copy on disk.
    assert len(on_disk) == 3 * batch * PER_REQUEST == len(set(on_disk))

    # Restarted with a smaller batch, the redelivery is split differently: its first part lands
    # in a new file next to the old one, so the same predictions are on disk twice.
    smaller = batch // 2
    _drain_killed_at(project, 1, smaller)
    on_disk = _ids_on_disk(settings)
    doubled = {i for i, n in Counter(on_disk).items() if n > 1}
    assert len(doubled) == smaller * PER_REQUEST and doubled <= set(waiting)

    # The last drain delivers the killed drain's batch again, says so, and moves the rest.
    result = predictions.drain(settings)
    assert result.redelivered == batch * PER_REQUEST
    assert predictions.pending(settings) == 0
    on_disk = _ids_on_disk(settings)
    logged = predictions.read_predictions(settings)["prediction_id"].to_pylist()
    assert (
        len(on_disk) == len(set(on_disk)) + smaller * PER_REQUEST
    )  # the copies are still on disk...
    assert sorted(logged) == sorted(set(on_disk))  # ...and the reader collapses them
    assert set(answered) <= set(logged)  # nothing answered was lost
