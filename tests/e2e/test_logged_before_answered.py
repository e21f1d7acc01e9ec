"""Logged before answered: while the prediction log cannot take a write, /predict never says 200.

A real `bentoml serve` on a Redis of the test's own, which the tests pause for writes (Redis
`CLIENT PAUSE WRITE`: reads, so the feature lookup, still work), make refuse writes (out of
memory) and kill. Every request shape goes through both of the service's /predict paths: the
fast path (JSON) and BentoML's own API method (any other content type passes the fast path by).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from maquette.config import Settings, load_settings
from maquette.serving.prediction_log import predictions_in
from maquette.serving.server import service_process
from tests.conftest import free_port
from tests.e2e.test_durability import kill_9, project_on, redis_process
from tests.test_serving import ROW, wait_ready

pytestmark = pytest.mark.slow

# (content type, shape, body): one row and a list of rows, through each /predict path.
REQUESTS = [
    (path, shape, body)
    for path in ("application/json", "text/plain")  # the fast path; BentoML's API method
    for shape, body in (("one row", {"rows": ROW}), ("a list", {"rows": [ROW, ROW]}))
]

# A service is ready in ~20 s; on a machine shared with other jobs it took 85 s.
STARTUP_S = 240


@dataclass
class Served:
    url: str
    redis_dir: Path
    redis_port: int
    redis_proc: subprocess.Popen[bytes]
    settings: Settings

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis.from_url(str(self.settings.redis.url))


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, production, loaded_project: Settings
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("logged_before_answered")
    redis_dir, redis_port = folder / "redis", free_port()
    redis_dir.mkdir()
    # No features materialized: a missing feature is answered (and flagged), which is enough.
    project = project_on(folder / "p", f"redis://127.0.0.1:{redis_port}/0", loaded_project)
    # A request timer well past the log write's own (5 s): on a loaded machine, queueing and
    # BentoML's overhead must not turn the 503 under test into BentoML's bare 504.
    config = yaml.safe_load((project / "maquette.yaml").read_text())
    config["serving"]["timeout_s"] = 15
    (project / "maquette.yaml").write_text(yaml.safe_dump(config))
    settings = load_settings(project)
    port = free_port()
    log = (folder / "service.log").open("wb")
    box = Served(
        f"http://127.0.0.1:{port}",
        redis_dir,
        redis_port,
        redis_process(redis_dir, redis_port),
        settings,
    )
    service = service_process(
        settings, "127.0.0.1", port, start_new_session=True, stdout=log, stderr=log
    )
    try:
        wait_ready(box.url, STARTUP_S)
        yield box
    finally:
        kill_9(service)
        log.close()
        box.redis_proc.terminate()
        box.redis_proc.wait(10)


def _post_all(url: str) -> list[tuple[str, httpx.Response]]:
    """Every request shape through both paths; (what was sent, the reply)."""
    replies = []
    for content_type, shape, body in REQUESTS:
        reply = httpx.post(
            f"{url}/predict",
            content=json.dumps(body),
            headers={"content-type": content_type},
            timeout=30,
        )
        replies.append((f"{shape} as {content_type}", reply))
    return replies


def _answered_ids(replies: list[tuple[str, httpx.Response]]) -> list[str]:
    ids = []
    for sent, reply in replies:
        assert reply.status_code == 200, f"{sent}: {reply.status_code} {reply.text}"
        ids += [a["prediction_id"] for a in reply.json()["predictions"]]
    return ids


def _logged_ids(served: Served) -> set[str]:
    """Prediction ids in the log (the Redis Stream; nothing is drained in this module)."""
    entries = served.client().xrange(served.settings.predictions.stream)
    return {p["prediction_id"] for i, fields in entries for p in predictions_in(i, fields)}


def _all_logged(served: Served, answered: list[str]) -> None:
    unlogged = set(answered) - _logged_ids(served)
    assert not unlogged, f"{len(unlogged)} of {len(answered)} answered predictions not in the log"


def _refused(replies: list[tuple[str, httpx.Response]], *says: str) -> None:
    for sent, reply in replies:
        assert reply.status_code == 503, f"{sent} answered {reply.status_code}: {reply.text}"
        body = reply.json()
        for words in says:
            assert words in body["error"] + " " + body["remedy"], f"{sent}: {body}"


def _answered_again(served: Served, deadline_s: float = 60) -> list[str]:
    """Ids answered once the service takes requests again (it recovers by itself)."""
    deadline = time.monotonic() + deadline_s
    while True:
        replies = _post_all(served.url)
        if all(r.status_code == 200 for _, r in replies) or time.monotonic() > deadline:
            return _answered_ids(replies)
        time.sleep(0.5)


def test_while_the_log_cannot_take_a_write_no_prediction_is_answered(served: Served) -> None:
    before = _answered_ids(_post_all(served.url))
    client = served.client()
    client.client_pause(600_000, all=False)  # WRITE: the log's XADD waits, feature reads do not
    try:
        paused = _post_all(served.url)
    finally:
        client.client_unpause()
    _refused(paused, "did not confirm", "prediction log", "not answered")
    after_pause = _answered_again(served)

    client.config_set("maxmemory", "1")  # every write refused: OOM (noeviction)
    try:
        full = _post_all(served.url)
    finally:
        client.config_set("maxmemory", "0")
    _refused(full, "refused", "prediction log", "maxmemory")
    after_full = _answered_again(served)

    _all_logged(served, before + after_pause + after_full)


def test_with_redis_killed_no_prediction_is_answered_until_it_is_back(served: Served) -> None:
    before = _answered_ids(_post_all(served.url))
    served.redis_proc.kill()  # SIGKILL: no shutdown, the AOF holds what was acknowledged
    served.redis_proc.wait(10)
    try:
        _refused(_post_all(served.url), "Redis", "maquette redis start")
    finally:
        served.redis_proc = redis_process(served.redis_dir, served.redis_port)
    after = _answered_again(served)
    _all_logged(served, before + after)
