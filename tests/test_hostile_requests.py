"""Hostile requests to the prediction service (issue 17): each is refused on its own, with a
status and a message, and never stops the service or the requests batched with it.

The HTTP layer's rules (body cap, media types, the key's refusal to serve exposed) run against a
real `bentoml serve`; the request rules (as_of, keys, fields, served versions) run through the
library's `Predictor`, which both /predict paths call. Predictions are logged to Redis database 2
of the session's Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
import redis as redis_py
import yaml
from feast.types import Int64, String
from pydantic import SecretStr

from maquette import registry
from maquette.config import Settings, load_settings
from maquette.errors import ConfigError, InvalidEntityFrame, ModelVersionNotFound
from maquette.serving import bento
from maquette.serving.prediction_log import predictions_in
from maquette.serving.predictor import PredictCall, Predictor, http_status
from maquette.serving.request_rules import RequestLimits, check_rows
from maquette.serving.scoring import Answers
from maquette.serving.server import service_command, service_process
from tests.conftest import free_port, make_project
from tests.test_serving import ROW, running_service

STARTUP_S = 240
MB = 1 << 20


def _db2(settings: Settings, **serving: object) -> Settings:
    """The settings on Redis database 2 (this module's), with a stream of its own."""
    copy = settings.model_copy(deep=True)
    copy.redis.url = str(settings.redis.url).rsplit("/", 1)[0] + "/2"
    copy.predictions.stream = "maquette:hostile"
    # The demo's rows are from 2013: a window reaching them (the demo project widens it too).
    copy.serving.as_of_max_past = "1500w"
    for name, value in serving.items():
        setattr(copy.serving, name, value)
    return copy


@pytest.fixture(scope="module")
def service(production, loaded_project: Settings) -> Iterator[str]:
    db2 = _db2(loaded_project)
    env = {
        "MAQUETTE_REDIS_URL": str(db2.redis.url),
        "MAQUETTE_PREDICTIONS_STREAM": db2.predictions.stream,
        "MAQUETTE_SERVING_AS_OF_MAX_PAST": "1500w",
    }
    with running_service(loaded_project, env, STARTUP_S) as url:
        yield url


def _logged(settings: Settings) -> list[dict]:
    client = redis_py.Redis.from_url(str(settings.redis.url))
    return [p for i, f in client.xrange(settings.predictions.stream) for p in predictions_in(i, f)]


@pytest.fixture
def predictor(production, loaded_project: Settings) -> Iterator[Predictor]:
    settings = _db2(loaded_project)
    redis_py.Redis.from_url(str(settings.redis.url)).delete(settings.predictions.stream)
    yield Predictor(settings)
    redis_py.Redis.from_url(str(settings.redis.url)).delete(settings.predictions.stream)


# ------------------------------------------------------------------------- the HTTP layer

# Both /predict paths: JSON goes to the fast path, another type to BentoML's own API method.
PATHS = {"fast path": "application/json", "BentoML's API": "text/plain"}


@pytest.mark.parametrize("path", PATHS)
def test_a_50_mb_body_is_refused_before_it_is_read_and_the_service_answers_the_next(
    service: str, path: str
) -> None:
    huge = b'{"rows": [' + b'{"origin": "JFK"},' * (50 * MB // 18) + b"{}]}"
    headers = {"content-type": PATHS[path]}
    began = time.monotonic()
    reply = httpx.post(f"{service}/predict", content=huge, headers=headers, timeout=30)
    assert reply.status_code == 413, reply.text[:300]
    assert "serving.max_body_bytes" in reply.json()["remedy"]
    assert time.monotonic() - began < 5  # refused on its Content-Length, not parsed

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield huge[: 2 * MB]
        yield huge[2 * MB : 4 * MB]

    reply = httpx.post(f"{service}/predict", content=chunks(), headers=headers, timeout=30)
    assert reply.status_code == 413, reply.text[:300]
    reply = httpx.post(f"{service}/predict", json={"rows": ROW}, timeout=10)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"],
)
def test_a_form_body_is_415_not_a_server_error(service: str, content_type: str) -> None:
    reply = httpx.post(
        f"{service}/predict",
        content=b'{"rows": {}}',
        headers={"content-type": content_type},
        timeout=10,
    )
    assert reply.status_code == 415, reply.text
    assert "application/json" in reply.json()["remedy"]


@pytest.mark.parametrize("path", PATHS)
def test_as_of_without_a_zone_or_outside_the_window_is_422_naming_the_setting(
    service: str, path: str
) -> None:
    for as_of, says in [
        ("0001-01-01T00:00:00", "has no time zone"),
        ("0001-01-01T00:00:00Z", "serving.as_of_max_past"),
        ("9999-12-31T23:59:59Z", "serving.as_of_max_future"),
    ]:
        reply = httpx.post(
            f"{service}/predict",
            content=orjson.dumps({"rows": ROW, "as_of": as_of}),
            headers={"content-type": PATHS[path]},
            timeout=10,
        )
        assert reply.status_code == 422, (as_of, reply.text)
        assert says in reply.text, reply.text


def test_the_openapi_document_lists_the_limits_and_every_error_status(service: str) -> None:
    doc = httpx.get(f"{service}/docs.json", timeout=10).json()
    post = doc["paths"]["/predict"]["post"]
    assert {"400", "404", "413", "415", "422", "503"} <= set(post["responses"])
    rows = post["requestBody"]["content"]["application/json"]["schema"]["properties"]["rows"]
    listed = rows["anyOf"][0]
    assert (listed["minItems"], listed["maxItems"]) == (1, 1000)
    value = listed["items"]["additionalProperties"]["anyOf"][0]
    assert value["maxLength"] == 256


def test_an_exposed_host_without_a_key_refuses_to_start(
    loaded_project: Settings, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="MAQUETTE_SERVING_API_KEY"):
        service_command(loaded_project, "0.0.0.0", free_port())
    service_command(loaded_project, "0.0.0.0", free_port(), {"MAQUETTE_SERVING_API_KEY": "k"})
    service_command(loaded_project, "127.0.0.1", free_port())  # loopback needs none
    # `bentoml serve` started any other way (here on loopback, with the project's host set to
    # every interface) refuses too: the check is in the service module.
    log = tmp_path / "service.log"
    with log.open("wb") as sink:
        proc = service_process(
            loaded_project,
            "127.0.0.1",
            free_port(),
            env={"MAQUETTE_SERVING_HOST": "0.0.0.0"},
            stdout=sink,
            stderr=sink,
        )
        try:
            assert proc.wait(STARTUP_S) != 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "MAQUETTE_SERVING_API_KEY" in log.read_text(errors="replace")


def test_the_api_key_is_a_secret_read_from_the_environment_and_never_in_a_bento(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_project(tmp_path / "p", None, serving={"api_key": "in-the-yaml"})
    monkeypatch.setenv("MAQUETTE_SERVING_API_KEY", "from-the-env")
    settings = load_settings(folder)
    assert isinstance(settings.serving.api_key, SecretStr)
    assert settings.serving.api_key.get_secret_value() == "from-the-env"
    assert "from-the-env" not in repr(settings) and "from-the-env" not in str(settings.serving)
    # The bento's staged maquette.yaml carries no key, though the project's file has one.
    aliases = settings.path(settings.registry.aliases)
    aliases.parent.mkdir(parents=True, exist_ok=True)
    aliases.write_text('{"aliases": {}, "history": []}')
    context = bento.build_context(settings, {"include": ["maquette.yaml", "bentos/*.py"]})
    staged = yaml.safe_load((context / "maquette.yaml").read_text())
    assert "api_key" not in staged["serving"]
    assert "in-the-yaml" not in (context / "maquette.yaml").read_text()


# ------------------------------------------------------------------- the request rules


def test_a_bad_as_of_is_its_own_422_and_the_rest_of_the_batch_is_answered(
    predictor: Predictor,
) -> None:
    good = PredictCall([ROW], None, datetime(2013, 12, 31, 15, tzinfo=UTC))
    naive = PredictCall([ROW], None, datetime(1, 1, 1))
    ancient = PredictCall([ROW], None, datetime(1, 1, 1, tzinfo=UTC))
    future = PredictCall([ROW], None, datetime.now(UTC) + timedelta(days=2))
    answers = predictor.predict_many([good, naive, ancient, future, good])
    assert isinstance(answers[0], Answers) and isinstance(answers[4], Answers)
    for bad in answers[1:4]:
        assert isinstance(bad, InvalidEntityFrame) and http_status(bad) == 422, bad
    assert "no time zone" in str(answers[1].message)  # type: ignore[union-attr]
    assert "serving.as_of_max_past" in answers[2].remedy  # type: ignore[union-attr]


def test_each_entry_logs_the_servers_receive_time_beside_as_of(predictor: Predictor) -> None:
    as_of = datetime(2013, 12, 31, 15, tzinfo=UTC)
    before = datetime.now(UTC)
    predictor.predict([ROW], None, as_of)
    (entry,) = _logged(predictor.settings)
    assert datetime.fromisoformat(entry["request_time"]) == as_of
    received = datetime.fromisoformat(entry["received_at"])
    assert before <= received <= datetime.now(UTC)


def test_keys_are_logged_as_declared_and_extra_fields_never(predictor: Predictor) -> None:
    # origin, carrier, tailnum and route are String keys: numbers become their text.
    row = {**ROW, "tailnum": 14228, "carrier": 9.0, "note": "x" * 200, "extra": 1}
    predictor.predict([row], None, datetime(2013, 12, 31, 15, tzinfo=UTC))
    (entry,) = _logged(predictor.settings)
    assert entry["entity"]["tailnum"] == "14228" and entry["entity"]["carrier"] == "9"
    assert "note" not in str(entry) and "extra" not in entry["request"]
    assert set(entry["request"]) == {"scheduled_departure"}


def test_a_label_time_field_no_feature_reads_is_still_logged(
    production, loaded_project: Settings
) -> None:
    # labels.time_from: row matches labels on a field of the request row: extra fields are
    # never logged, but that one must be, or no label ever joins.
    settings = _db2(loaded_project)
    labels = settings.models["flight_delay"].labels
    assert labels is not None
    labels.time_column, labels.time_from = "flight_date", "row"
    client = redis_py.Redis.from_url(str(settings.redis.url))
    client.delete(settings.predictions.stream)
    try:
        Predictor(settings).predict(
            [{**ROW, "flight_date": "2013-12-31"}],
            "flight_delay",
            datetime(2013, 12, 31, tzinfo=UTC),
        )
        (entry,) = _logged(settings)
        assert entry["request"]["flight_date"] == "2013-12-31"
    finally:
        client.delete(settings.predictions.stream)


def test_a_bento_carries_no_credential(tmp_path: Path) -> None:
    folder = make_project(
        tmp_path / "p",
        "redis://:user-pw@127.0.0.1:1/0",
        serving={"api_key": "k1"},
        orchestration={"prefect_auth": "p1"},
    )
    settings = load_settings(folder)
    aliases = settings.path(settings.registry.aliases)
    aliases.parent.mkdir(parents=True, exist_ok=True)
    aliases.write_text('{"aliases": {}, "history": []}')
    context = bento.build_context(settings, {"include": ["maquette.yaml", "bentos/*.py"]})
    text = (context / "maquette.yaml").read_text()
    for secret in ("k1", "p1", "user-pw"):
        assert secret not in text
    assert yaml.safe_load(text)["redis"]["url"] == "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"origin": ["JFK"]}, "non-scalar"),
        ({"origin": {"code": "JFK"}}, "non-scalar"),
        ({"origin": 1.5}, "declared String"),
        ({"route": "R" * 257}, "the limit is 256"),
        ({f"f{i}": i for i in range(64)}, "the limit is 64"),
    ],
)
def test_rows_breaking_a_rule_are_422_naming_it(
    predictor: Predictor, change: dict, says: str
) -> None:
    good = PredictCall([ROW], None, datetime(2013, 12, 31, 15, tzinfo=UTC))
    bad = PredictCall([{**ROW, **change}], None, datetime(2013, 12, 31, 15, tzinfo=UTC))
    answers = predictor.predict_many([bad, good])
    assert isinstance(answers[0], InvalidEntityFrame), answers[0]
    assert says in answers[0].message
    assert isinstance(answers[1], Answers)


def test_int64_keys_out_of_range_are_422_not_a_struct_error() -> None:
    limits = RequestLimits.of(load_settings(Path(__file__).resolve().parent.parent))
    types = {"flight_id": Int64, "origin": String}
    rows = [
        {"flight_id": 2**63, "origin": "JFK"},
        {"flight_id": "-9223372036854775809", "origin": "JFK"},
        {"flight_id": "12a", "origin": "JFK"},
        {"flight_id": True, "origin": "JFK"},
    ]
    for row in rows:
        with pytest.raises(InvalidEntityFrame, match="flight_id"):
            check_rows([row], ("flight_id", "origin"), types, (), limits, "m:v1")
    (ok,) = check_rows(
        [{"flight_id": "9223372036854775807", "origin": 7}],
        ("flight_id", "origin"),
        types,
        (),
        limits,
        "m:v1",
    )
    assert ok == {"flight_id": 2**63 - 1, "origin": "7"}


def test_only_versions_an_alias_split_or_shadow_points_to_are_served(
    production, loaded_project: Settings, tmp_path: Path
) -> None:
    tag = production["late_arrival"]
    name, version = tag.split(":")
    settings = _db2(loaded_project)
    # An alias table in which late_arrival's version is no alias's: an unpromoted candidate.
    table = registry.alias_table(loaded_project)
    settings.registry.aliases = tmp_path / "aliases.json"
    settings.registry.aliases.write_text(
        orjson.dumps({"aliases": {"flight_delay": table["flight_delay"]}, "history": []}).decode()
    )
    served = Predictor(settings)
    with pytest.raises(ModelVersionNotFound, match="in service") as refused:
        served.predict([ROW], tag, datetime(2013, 12, 31, 15, tzinfo=UTC))
    assert http_status(refused.value) == 404 and "promote" in refused.value.remedy
    assert tag not in served._versions  # never loaded
    # A split or a shadow naming it serves it; library mode (user code) loads any version.
    split = _db2(loaded_project, traffic={name: {version: 1.0}})
    split.registry.aliases = settings.registry.aliases
    assert Predictor(split).predict([ROW], tag, datetime(2013, 12, 31, 15, tzinfo=UTC))
    assert Predictor(settings, log=False, any_version=True).predict(
        [ROW], tag, datetime(2013, 12, 31, 15, tzinfo=UTC)
    )


def test_a_version_that_failed_to_load_is_served_once_an_alias_fixes_it(
    production, loaded_project: Settings, tmp_path: Path
) -> None:
    settings = _db2(loaded_project)
    table = registry.alias_table(loaded_project)
    settings.registry.aliases = tmp_path / "aliases.json"
    broken = {**table, "late_arrival": {"production": "v999"}}  # a version that is not there
    settings.registry.aliases.write_text(orjson.dumps({"aliases": broken, "history": []}).decode())
    predictor = Predictor(settings, log=False)
    when = datetime(2013, 12, 31, 15, tzinfo=UTC)
    for _ in range(2):  # the second is answered from the remembered miss
        with pytest.raises(ModelVersionNotFound, match="v999"):
            predictor.predict([ROW], "late_arrival", when)
    assert "late_arrival:v999" in predictor._misses
    time.sleep(0.01)  # a new mtime
    settings.registry.aliases.write_text(orjson.dumps({"aliases": table, "history": []}).decode())
    (answer,) = predictor.predict([ROW], "late_arrival", when)
    assert answer.model == production["late_arrival"]
    assert not predictor._misses
