"""Two replicas of the service over the same Redis, the aliases in Redis
(`registry.alias_store: redis`): a promotion through the CLI reaches both within a second with
no failed request, and every prediction either answered is in the drained log exactly once."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from typing import Any

import duckdb
import httpx
import pytest

from maquette import registry
from maquette.config import Settings, load_settings
from maquette.features.layer import FeatureLayer
from maquette.serving import prediction_log as predictions
from maquette.training import pipeline as training
from tests.conftest import ROOT, copy_feature_tables, make_project
from tests.test_serving import ROW, running_service

pytestmark = pytest.mark.slow
WHEN = "2013-12-31T15:00:00+00:00"


@pytest.fixture(scope="module")
def replicated(
    tmp_path_factory: pytest.TempPathFactory,
    loaded_project: Settings,
    running_redis: str,
    production: dict[str, str],
) -> Settings:
    """The loaded project with its aliases in Redis and a prediction log of its own."""
    folder = make_project(
        tmp_path_factory.mktemp("replicas"),
        running_redis,
        registry={"alias_store": "redis"},
        predictions={"stream": "test:replicas:predictions"},
    )
    settings = load_settings(folder)
    copy_feature_tables(loaded_project, settings)
    FeatureLayer(settings).apply()  # the same Feast project: the session's online values
    for tag in production.values():  # the service is ready once every model's alias resolves
        registry.promote(settings, tag, "production")
    return settings


def test_the_alias_table_lives_in_redis_with_its_history(replicated: Settings) -> None:
    assert not replicated.path(replicated.registry.aliases).exists()
    stamp = registry.alias_stamp(replicated)
    moves = registry.alias_history(replicated, "flight_delay")
    assert moves and moves[-1]["alias"] == "production"
    again = registry.promote(
        replicated, moves[-1]["version"] and f"flight_delay:{moves[-1]['version']}"
    )
    assert registry.alias_stamp(replicated) != stamp
    assert registry.alias_history(replicated, "flight_delay")[-1] == again


def test_two_replicas_follow_a_cli_promotion_within_a_second_and_log_each_answer_once(
    replicated: Settings, loaded_project: Settings
) -> None:
    before = registry.resolve(replicated, "flight_delay@production").tag
    after = training.train(loaded_project, "flight_delay", 1).tag  # a new version to move to
    answers: list[dict[str, Any]] = []
    failures: list[str] = []
    stop = threading.Event()

    def load(urls: list[str]) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(1_000_000):
                if stop.is_set():
                    return
                url = urls[i % 2]
                body = {"rows": ROW, "model": "flight_delay@production", "as_of": WHEN}
                try:
                    reply = client.post(f"{url}/predict", json=body)
                except httpx.HTTPError as exc:
                    failures.append(f"{url}: {exc}")
                    continue
                if reply.status_code != 200:
                    failures.append(f"{url}: {reply.status_code} {reply.text[:200]}")
                    continue
                (answer,) = reply.json()["predictions"]
                answers.append({**answer, "url": url, "at": time.monotonic()})

    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(running_service(replicated, {})) for _ in range(2)]
        loader = threading.Thread(target=load, args=(urls,))
        loader.start()
        try:
            time.sleep(2)
            moved = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "maquette",
                    "models",
                    "promote",
                    after,
                    "--alias",
                    "production",
                    "--project",
                    str(replicated.project_dir),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            promoted_at = time.monotonic()
            assert moved.returncode == 0, moved.stderr
            time.sleep(3)
        finally:
            stop.set()
            loader.join(30)
    assert not failures, failures[:5]
    for url in urls:
        mine = [a for a in answers if a["url"] == url]
        assert any(a["model"] == before for a in mine if a["at"] < promoted_at - 0.5), url
        late = [a for a in mine if a["at"] > promoted_at + 1.0]
        assert late and all(a["model"] == after for a in late), url
    # Every answer of both replicas is in the drained log, once.
    predictions.drain(replicated)
    folder = replicated.path(replicated.predictions.folder)
    counts = dict(
        duckdb.sql(
            f"SELECT prediction_id, count(*) FROM read_parquet('{folder}/**/*.parquet') "
            "GROUP BY prediction_id"
        ).fetchall()
    )
    answered = {a["prediction_id"] for a in answers}
    assert answered <= set(counts) and all(counts[p] == 1 for p in answered)
    assert len(answered) == len(answers) > 50
