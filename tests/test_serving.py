"""Online serving: a real `bentoml serve` on loopback, real Redis, real registered models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
import redis as redis_py

from maquette import registry
from maquette.config import Settings
from maquette.serving import batch
from maquette.serving import prediction_log as predictions
from maquette.serving.http import PredictRoute
from maquette.serving.library import load_model
from maquette.serving.predictor import Predictor
from maquette.serving.server import service_process
from maquette.training import pipeline as training
from tests.conftest import free_port, moved_to_cluster

ROW = {
    "origin": "JFK",
    "carrier": "UA",
    "tailnum": "N14228",
    "route": "JFK-LAX",
    "scheduled_departure": "2013-12-31T15:00:00Z",
}


@contextlib.contextmanager
def running_service(settings: Settings, env: dict[str, str], timeout: float = 240) -> Iterator[str]:
    """`bentoml serve` of the project on a free loopback port, ready; yields its URL."""
    proc = service_process(
        settings,
        "127.0.0.1",
        port := free_port(),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def wait_ready(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready")


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming what was awaited after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def production_aliases(production, loaded_project: Settings) -> None:
    """Every test here starts with the trained versions at @production (others move the alias)."""
    for tag in production.values():
        if registry.resolve(loaded_project, f"{tag.split(':')[0]}@production").tag != tag:
            registry.promote(loaded_project, tag, "production")


@pytest.fixture(scope="module")
def two_versions(trained, loaded_project: Settings) -> dict[str, list[str]]:
    """At least two registered versions of each model (for splits, shadows and alias moves)."""
    settings = loaded_project.model_copy(deep=True)
    for spec in settings.models.values():
        spec.search.trials = 1
    found = {}
    for name in trained:
        if len(registry.list_versions(settings, name)) < 2:
            training.train(settings, name)
        found[name] = [v.version for v in registry.list_versions(settings, name)]
    return found


@pytest.fixture(
    scope="module", params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)]
)
def served(
    request: pytest.FixtureRequest, production, loaded_project: Settings
) -> Iterator[tuple[str, Settings]]:
    """The service of the loaded project on one Redis, then with everything on the Redis
    Cluster (features, log): its URL, and the settings it runs with."""
    settings, env = loaded_project, {}
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        request.getfixturevalue("cluster_project")  # the online values, materialized there
        settings = moved_to_cluster(loaded_project, cluster)
        env = {
            "MAQUETTE_REDIS_CLUSTER": json.dumps(cluster.nodes),
            "MAQUETTE_REDIS_PASSWORD": cluster.password,
            "MAQUETTE_REDIS_URL": "",  # unset: everything on the cluster
        }
    with running_service(loaded_project, env) as url:
        yield url, settings


@pytest.fixture(scope="module")
def service(served: tuple[str, Settings]) -> str:
    return served[0]


def test_predict_answers_with_version_partition_and_feature_flags(service: str, production) -> None:
    reply = httpx.post(f"{service}/predict", json={"rows": ROW}, timeout=10)
    assert reply.status_code == 200, reply.text
    (answer,) = reply.json()["predictions"]
    assert answer["model"] == production["flight_delay"]
    assert answer["partition"] in {"JFK", "__parent__"}
    assert len(answer["prediction_id"]) == 32 and isinstance(answer["prediction"], float)
    assert "temp" in answer["stale_features"]  # the last weather is from 2013, long past its TTL


def test_a_list_of_rows_and_a_model_selector(service: str, production) -> None:
    rows = [ROW, {**ROW, "origin": "EWR", "route": "EWR-ORD"}]
    reply = httpx.post(
        f"{service}/predict", json={"rows": rows, "model": "late_arrival@production"}, timeout=10
    )
    assert reply.status_code == 200, reply.text
    answers = reply.json()["predictions"]
    assert [a["model"] for a in answers] == [production["late_arrival"]] * 2
    assert all(isinstance(a["decision"], bool) and 0 <= a["prediction"] <= 1 for a in answers)


def test_unknown_entities_are_predicted_and_flagged(service: str) -> None:
    row = {
        "origin": "ZZZ",
        "carrier": "QQ",
        "tailnum": "N0NE",
        "route": "ZZZ-YYY",
        "scheduled_departure": "2013-12-31T15:00:00Z",
    }
    (answer,) = httpx.post(f"{service}/predict", json={"rows": [row]}, timeout=10).json()[
        "predictions"
    ]
    assert answer["partition"] == "__parent__"
    assert {"temp", "seats", "route_flights_28d"} <= set(answer["missing_features"])


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ('{"rows": [', 400, "Invalid JSON"),
        ('{"rows": 5}', 400, "rows"),
        (
            '{"rows": [{"origin": "JFK"}]}',
            422,
            "lacks ['tailnum', 'carrier', 'route', 'scheduled_departure']",
        ),
        ('{"rows": []}', 422, "holds no rows"),
        (
            '{"rows": [{"origin": "JFK", "carrier": "UA", "tailnum": "N1", "route": "JFK-LAX", '
            '"scheduled_departure": "yesterday"}]}',
            422,
            "not an ISO time",
        ),
        (
            '{"rows": [{"origin": "JFK", "carrier": "UA", "tailnum": "N1", "route": "JFK-LAX", '
            '"scheduled_departure": "2013-12-31T15:00:00"}]}',
            422,
            "has no time zone",
        ),
        (
            '{"rows": [{"origin": ["JFK"], "carrier": "UA", "tailnum": "N1", "route": "JFK-LAX", '
            '"scheduled_departure": "2013-12-31T15:00:00Z"}]}',
            422,
            "non-scalar value",
        ),
        ('{"rows": {}, "model": "nope"}', 404, "no model named 'nope'"),
        ('{"rows": {}, "model": "flight_delay:v999"}', 404, "has no version 'v999'"),
        ('{"rows": {}, "model": "flight_delay@nightly"}', 404, "has no alias 'nightly'"),
    ],
)
def test_bad_requests_get_a_status_and_a_message_naming_the_problem(
    service: str, body: str, status: int, says: str
) -> None:
    reply = httpx.post(
        f"{service}/predict", content=body, headers={"content-type": "application/json"}, timeout=10
    )
    assert reply.status_code == status, reply.text
    assert says in reply.text


def test_a_batch_over_the_limit_is_refused(service: str) -> None:
    reply = httpx.post(f"{service}/predict", json={"rows": [ROW] * 1001}, timeout=20)
    assert reply.status_code == 422 and "the limit is 1000" in reply.text


def test_health_readiness_and_metrics(service: str) -> None:
    assert httpx.get(f"{service}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{service}/readyz", timeout=5).status_code == 200
    httpx.post(f"{service}/predict", json={"rows": ROW}, timeout=10)
    metrics = httpx.get(f"{service}/metrics", timeout=5).text
    assert "maquette_predictions_total" in metrics and "maquette_predict_seconds_bucket" in metrics


def test_every_answer_is_in_the_prediction_log(served: tuple[str, Settings]) -> None:
    service, settings = served
    ids = []
    for _ in range(5):
        ids += [
            a["prediction_id"]
            for a in httpx.post(f"{service}/predict", json={"rows": [ROW, ROW]}, timeout=10).json()[
                "predictions"
            ]
        ]
    predictions.drain(settings)
    logged = predictions.read_predictions(settings)
    assert set(ids) <= set(logged["prediction_id"].to_pylist())
    row = logged.filter(np.isin(logged["prediction_id"].to_numpy(zero_copy_only=False), ids[:1]))
    assert row["entity"][0].as_py().startswith("{") and row["features"][0].as_py().count(":") > 20


def test_an_alias_moves_under_load_without_a_restart_or_a_failed_request(
    service: str, production, loaded_project: Settings
) -> None:
    settings = loaded_project.model_copy(deep=True)
    settings.models["flight_delay"].search.trials = 1
    newer = training.train(settings, "flight_delay")
    old = production["flight_delay"]
    failures, seen = [], Counter()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                reply = client.post(f"{service}/predict", json={"rows": ROW})
                if reply.status_code != 200:
                    failures.append(reply.text)
                else:
                    seen[reply.json()["predictions"][0]["model"]] += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: seen[old] >= 20 or failures, 60, f"20 answers from {old}")
        registry.promote(loaded_project, newer.tag, "production")
        old_at_move = seen[old]
        wait_until(lambda: seen[newer.tag] >= 20 or failures, 60, f"20 answers from {newer.tag}")
    finally:
        stop.set()
        for t in threads:
            t.join()
        registry.promote(loaded_project, old, "production")
    assert failures == []
    assert seen[old] >= 20 and seen[newer.tag] >= 20
    # After the move only requests already in flight (one per thread) got the old version.
    assert seen[old] <= old_at_move + len(threads), seen


def test_traffic_split_follows_the_weights(two_versions, loaded_project: Settings) -> None:
    settings = loaded_project.model_copy(deep=True)
    versions = two_versions["flight_delay"][:2]
    settings.serving.traffic = {"flight_delay": {versions[0]: 0.8, versions[1]: 0.2}}
    predictor = Predictor(settings, log=False)
    picks = Counter(predictor.resolve("flight_delay") for _ in range(4000))
    share = picks[f"flight_delay:{versions[0]}"] / 4000
    assert 0.76 < share < 0.84


def test_a_shadow_version_is_logged_but_never_returned(
    two_versions, production, loaded_project: Settings
) -> None:
    settings = loaded_project.model_copy(deep=True)
    shadow = next(
        v for v in two_versions["late_arrival"] if f"late_arrival:{v}" != production["late_arrival"]
    )
    settings.serving.shadow = {"late_arrival": shadow}
    settings.predictions.stream = "maquette:shadow-test"
    (answer,) = Predictor(settings).predict([ROW], "late_arrival@production")
    assert answer.model == production["late_arrival"]
    predictions.drain(settings)
    logged = predictions.read_predictions(settings, "late_arrival")
    mine = logged.filter(
        np.isin(
            logged["stream_id"].to_numpy(zero_copy_only=False),
            logged["stream_id"].to_numpy(zero_copy_only=False)[-2:],
        )
    )
    assert sorted(mine["shadow"].to_pylist()) == [False, True]
    assert set(mine["version"].to_pylist()) == {production["late_arrival"].split(":")[1], shadow}


def test_online_library_and_batch_predictions_are_identical(
    production, loaded_project: Settings
) -> None:
    # A Redis database materialized up to 23:30 on 2013-12-30 holds, for flights between
    # 23:00 and 23:30, exactly the values a point-in-time join finds for them.
    settings = loaded_project.model_copy(deep=True)
    settings.redis.url = str(loaded_project.redis.url).rsplit("/", 1)[0] + "/3"
    from maquette.features.layer import FeatureLayer

    redis_py.Redis.from_url(settings.redis.url).flushdb()
    # The HTTP leg: a server of the same project reading that database (it starts meanwhile).
    port = free_port()
    server = service_process(
        loaded_project,
        "127.0.0.1",
        port,
        env={"MAQUETTE_REDIS_URL": settings.redis.url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cutoff = datetime(2013, 12, 30, 23, 30, tzinfo=UTC)
        FeatureLayer(settings).materialize(datetime(2013, 1, 1, tzinfo=UTC), cutoff)
        query = (
            "SELECT * FROM flights WHERE event_timestamp >= '2013-12-30 23:00:00+00' AND "
            "event_timestamp <= '2013-12-30 23:30:00+00' AND tailnum IS NOT NULL ORDER BY flight_id"
        )
        scored = batch.predict_batch(settings, query, "flight_delay@production").table.to_pylist()
        assert len(scored) >= 5
        library = load_model("flight_delay@production", settings)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout=120)
        for row in scored:
            request = {
                k: row[k] for k in ("origin", "carrier", "tailnum", "route", "scheduled_departure")
            }
            (answer,) = library.predict([request], as_of=row["event_timestamp"])
            assert answer.prediction == pytest.approx(row["prediction"], rel=1e-9), row["flight_id"]
            assert answer.partition == row["partition"]
            body = {
                "rows": {
                    **request,
                    "scheduled_departure": request["scheduled_departure"].isoformat(),
                },
                "model": "flight_delay@production",
                "as_of": row["event_timestamp"].isoformat(),
            }
            reply = httpx.post(f"{url}/predict", json=body, timeout=10)
            assert reply.status_code == 200, reply.text
            (online,) = reply.json()["predictions"]
            assert online["prediction"] == pytest.approx(row["prediction"], rel=1e-9), row
            assert (online["model"], online["partition"]) == (
                row["model_version"],
                row["partition"],
            )
            assert online["missing_features"] == answer.missing_features
    finally:
        server.terminate()
        server.wait(20)


def test_http_and_library_answers_are_identical(
    service: str, production, loaded_project: Settings
) -> None:
    library = load_model("flight_delay@production", loaded_project)
    when = "2013-12-31T15:00:00+00:00"
    for origin, route in (("JFK", "JFK-LAX"), ("EWR", "EWR-ORD"), ("LGA", "LGA-ATL")):
        row = {**ROW, "origin": origin, "route": route}
        http = httpx.post(
            f"{service}/predict", json={"rows": row, "as_of": when}, timeout=10
        ).json()
        (mine,) = library.predict([row], as_of=datetime.fromisoformat(when))
        assert http["predictions"][0]["prediction"] == pytest.approx(mine.prediction, rel=1e-12)
        assert http["predictions"][0]["partition"] == mine.partition


AS_OF = "2013-12-31T15:00:00+00:00"
GOOD_REQUESTS = [
    {"rows": ROW, "as_of": AS_OF},
    {
        "rows": [ROW, {**ROW, "origin": "EWR", "route": "EWR-ORD"}],
        "model": "late_arrival@production",
        "as_of": AS_OF,
    },
    {"rows": [{**ROW, "origin": "ZZZ", "route": "ZZZ-YYY"}], "as_of": AS_OF},
    {"rows": {**ROW, "origin": "LGA", "route": "LGA-ATL"}, "model": "flight_delay"},
]
BAD_BODIES = [
    '{"rows": [',
    '{"rows": [{"origin": {"code": "JFK"}, "carrier": "UA", "tailnum": "N1", "route": "JFK-LAX", '
    '"scheduled_departure": "2013-12-31T15:00:00Z"}]}',
    '{"rows": 5}',
    '{"rows": [{"origin": "JFK"}]}',
    '{"rows": []}',
    '{"rows": {}, "model": "nope"}',
    '{"rows": {}, "model": "flight_delay:v999"}',
    '{"rows": [{"origin": "JFK", "carrier": "UA", "tailnum": "N1", "route": "JFK-LAX", '
    '"scheduled_departure": "2013-12-31T15:00:00"}]}',
]


def _comparable(reply: httpx.Response) -> object:
    body = reply.json()
    if reply.status_code == 200:
        for answer in body["predictions"]:
            del answer["prediction_id"]  # fresh per prediction
        return body
    if reply.status_code == 400:  # pydantic's errors; the title names each side's own model
        return [(d["type"], d["loc"], d["msg"]) for d in body["detail"]]
    return body


def _batches(url: str) -> float:
    """How many batches the fast path answered, per /metrics (0 when it never ran)."""
    metrics = httpx.get(f"{url}/metrics", timeout=5).text.splitlines()
    counts = [x for x in metrics if x.startswith("maquette_predict_batch_requests_count")]
    return sum(float(line.split()[-1]) for line in counts)


def test_the_fast_path_answers_exactly_like_bentomls_own_api(
    service: str, production, loaded_project: Settings
) -> None:
    bodies = [json.dumps(r) for r in GOOD_REQUESTS] + BAD_BODIES
    headers = {"content-type": "application/json"}

    def answers(url: str) -> list[tuple[int, object]]:
        replies = [
            httpx.post(f"{url}/predict", content=body, headers=headers, timeout=10)
            for body in bodies
        ]
        return [(r.status_code, _comparable(r)) for r in replies]

    fast = answers(service)
    # The fast path answered (it counts its batches). Read before the second server starts:
    # BentoML clears the metrics folder under BENTOML_HOME, which both servers share here.
    assert _batches(service) > 0
    port = free_port()
    proc = service_process(
        loaded_project,
        "127.0.0.1",
        port,
        env={"MAQUETTE_SERVING_FAST_PATH": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stock = f"http://127.0.0.1:{port}"
    try:
        wait_ready(stock)
        for body, mine, theirs in zip(bodies, fast, answers(stock), strict=True):
            assert mine == theirs, body
        assert _batches(stock) == 0  # BentoML's own @bentoml.api answered there
    finally:
        proc.terminate()
        proc.wait(20)


def _post_together(route: PredictRoute, bodies: list[bytes]) -> list[tuple[int, dict]]:
    """POST the bodies to the route in one event-loop turn; (status, JSON) per body."""

    async def post(body: bytes) -> tuple[int, dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "path": "/predict",
            "method": "POST",
            "headers": [(b"content-type", b"application/json")],
        }
        await route(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    async def all_at_once() -> list[tuple[int, dict]]:
        return await asyncio.gather(*(post(b) for b in bodies))

    return asyncio.run(all_at_once())


async def _never_reached(scope: dict, receive: object, send: object) -> None:
    raise AssertionError("POST /predict must not reach BentoML")


def test_requests_arriving_together_are_answered_together_each_as_if_alone(
    production, loaded_project: Settings
) -> None:
    settings = loaded_project.model_copy(deep=True)
    settings.predictions.stream = "maquette:batch-test"
    # A shadow that cannot load must not fail the live answers it rides along with.
    settings.serving.shadow = {"late_arrival": "v999"}
    log = redis_py.Redis.from_url(str(settings.redis.url))
    log.delete(settings.predictions.stream)
    batches: list[int] = []

    route = PredictRoute(_never_reached, observe_batch=batches.append)
    route.predictor = Predictor(settings)
    huge = {**ROW, "flight": 2**70}  # past 64 bits: orjson refuses it, the log still takes it
    odd = [
        {**ROW, "scheduled_departure": 1e20},  # no datetime can hold it
        {**ROW, "scheduled_departure": "0001-01-01T00:00:00Z"},  # breaks the calendar view
    ]
    bodies = [json.dumps(r).encode() for r in GOOD_REQUESTS] + [
        json.dumps({"rows": huge, "as_of": AS_OF}).encode(),
        *(json.dumps({"rows": row}).encode() for row in odd),
        b'{"rows": [{"origin": "JFK"}]}',  # 422, its own error
        b'{"rows": {}, "model": "nope"}',  # 404
        b'{"rows": [',  # 400 before it is queued
    ]

    replies = _post_together(route, bodies)
    assert batches == [len(bodies) - 1]  # one feature read and one log append for the rest
    statuses = [status for status, _ in replies]
    assert statuses == [200] * (len(GOOD_REQUESTS) + 1) + [422, 422, 422, 404, 400], replies
    assert "timestamp" in replies[-5][1]["error"] and "features" in replies[-4][1]["error"]
    assert "lacks" in replies[-3][1]["error"] and "no model named 'nope'" in replies[-2][1]["error"]
    alone = Predictor(settings, log=False)
    for request, (_, reply) in zip(GOOD_REQUESTS, replies, strict=False):
        rows = request["rows"] if isinstance(request["rows"], list) else [request["rows"]]
        as_of = datetime.fromisoformat(request["as_of"]) if "as_of" in request else None
        expected = alone.predict(rows, request.get("model"), as_of)
        got = reply["predictions"]
        assert [a["prediction"] for a in got] == [e.prediction for e in expected]
        assert [(a["model"], a["partition"]) for a in got] == [
            (e.model, e.partition) for e in expected
        ]
        assert [a["missing_features"] for a in got] == [e.missing_features for e in expected]
    answered = sum(len(reply["predictions"]) for status, reply in replies if status == 200)
    logged = [
        p["prediction_id"]
        for i, f in log.xrange(settings.predictions.stream)
        for p in predictions.predictions_in(i, f)
    ]
    assert len(logged) == len(set(logged)) == answered  # each logged once
    log.delete(settings.predictions.stream)


def test_a_failing_metrics_hook_gives_500s_not_hung_requests(loaded_project: Settings) -> None:
    def broken(requests: int) -> None:
        raise RuntimeError("metrics backend gone")

    route = PredictRoute(_never_reached, observe_batch=broken)
    route.predictor = Predictor(loaded_project, log=False)
    replies = _post_together(route, [json.dumps(GOOD_REQUESTS[0]).encode()] * 2)
    assert [status for status, _ in replies] == [500, 500]
    assert "check the server log" in replies[0][1]["error"]
