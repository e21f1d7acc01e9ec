"""`serving.api_key`: /predict needs the key on both its paths; probes and metrics do not.

One real `bentoml serve` with a key set (and BentoML's access log on, so the log has every
request in it), on the session's Redis and models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from maquette.config import Settings
from maquette.serving.server import service_process
from tests.conftest import free_port
from tests.test_serving import ROW, wait_ready

KEY = "k3y-7f2c9e1a-never-shown"
RIGHT = {"authorization": f"Bearer {KEY}"}
WRONG_KEYS: list[dict[str, str]] = [
    {},  # no key
    {"authorization": "Bearer nope"},
    {"authorization": f"Bearer {KEY}x"},  # a longer key is not the key
    {"authorization": f"Bearer {KEY[:-1]}"},  # nor is a prefix
    {"authorization": KEY},  # the key without the scheme
    {"x-api-key": KEY},  # another header
]
# POST /predict has two paths: a JSON body goes to the fast path (maquette/serving/http.py),
# any other content type passes it by to BentoML's own @bentoml.api method (bentos/service.py).
PATHS = {"fast path": "application/json", "BentoML's API": "text/plain"}
BODIES = [json.dumps({"rows": ROW}), json.dumps({"rows": [ROW, ROW]})]  # one row, a list

# A service is ready in ~20 s; on a machine shared with other jobs it took 85 s.
STARTUP_S = 240


@dataclass
class KeyedService:
    url: str
    log: Path


@pytest.fixture(scope="module")
def keyed_service(
    tmp_path_factory: pytest.TempPathFactory, production, loaded_project: Settings
) -> Iterator[KeyedService]:
    log = tmp_path_factory.mktemp("api_key") / "service.log"
    port = free_port()
    with log.open("wb") as sink:
        proc = service_process(
            loaded_project,
            "127.0.0.1",
            port,
            env={"MAQUETTE_SERVING_API_KEY": KEY, "MAQUETTE_SERVING_ACCESS_LOG": "true"},
            stdout=sink,
            stderr=sink,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, STARTUP_S)
            yield KeyedService(url, log)
        finally:
            proc.terminate()
            proc.wait(20)


def _post(url: str, body: str, content_type: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{url}/predict",
        content=body,
        headers={"content-type": content_type, **headers},
        timeout=10,
    )


def _fast_path_batches(url: str) -> float:
    """Batches the fast path answered, per /metrics (BentoML's own API method counts none)."""
    lines = httpx.get(f"{url}/metrics", timeout=5).text.splitlines()
    return sum(
        float(line.split()[-1])
        for line in lines
        if line.startswith("maquette_predict_batch_requests_count")
    )


@pytest.mark.parametrize("path", PATHS)
def test_predict_without_the_right_key_is_401_on_both_paths(
    keyed_service: KeyedService, path: str
) -> None:
    for headers in WRONG_KEYS:
        for body in BODIES:
            reply = _post(keyed_service.url, body, PATHS[path], headers)
            assert reply.status_code == 401, (headers, reply.text)
            assert "missing or wrong API key" in reply.json()["error"]


@pytest.mark.parametrize("path", PATHS)
def test_predict_with_the_right_key_is_answered_by_that_path(
    keyed_service: KeyedService, path: str
) -> None:
    before = _fast_path_batches(keyed_service.url)
    for body in BODIES:
        reply = _post(keyed_service.url, body, PATHS[path], RIGHT)
        assert reply.status_code == 200, reply.text
        assert all(len(a["prediction_id"]) == 32 for a in reply.json()["predictions"])
    answered_by_fast_path = _fast_path_batches(keyed_service.url) - before
    assert answered_by_fast_path == (len(BODIES) if path == "fast path" else 0)


def test_probes_and_metrics_need_no_key_and_everything_else_does(
    keyed_service: KeyedService,
) -> None:
    # README "Serving": /healthz, /readyz and /metrics are open (probes, Prometheus); the
    # key guards every other route, the Swagger UI included.
    for route in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{keyed_service.url}{route}", timeout=5).status_code == 200, route
    assert "maquette_predictions_total" in httpx.get(f"{keyed_service.url}/metrics").text
    for route in ("/", "/docs.json"):
        assert httpx.get(f"{keyed_service.url}{route}", timeout=5).status_code == 401, route
        assert httpx.get(f"{keyed_service.url}{route}", headers=RIGHT).status_code == 200, route


def test_the_key_never_appears_in_the_log_or_an_error_body(keyed_service: KeyedService) -> None:
    bodies = []
    for content_type in PATHS.values():
        for headers in WRONG_KEYS:
            bodies.append(_post(keyed_service.url, BODIES[0], content_type, headers).text)
        # Errors of a request that carried the key: bad JSON, a bad row, an unknown model.
        for body in ('{"rows": [', '{"rows": [{"origin": "JFK"}]}', '{"rows": {}, "model": "no"}'):
            reply = _post(keyed_service.url, body, content_type, RIGHT)
            assert reply.status_code in (400, 422, 404), reply.text
            bodies.append(reply.text)
    assert not [b for b in bodies if KEY in b]
    log = keyed_service.log.read_text(errors="replace")
    assert "method=POST,path=/predict" in log  # the access log is on: the requests are in it
    assert KEY not in log
