"""Two replicas of the service over the same Redis, then over a Redis Cluster, the aliases in
Redis (`registry.alias_store: redis`): a promotion or a traffic split through the CLI reaches
both within a second with no failed request, and every prediction either answered is in the
drained log exactly once. On the cluster, a master killed under load: requests fail with a 503
that says what is down and what to do, the replicas answer again once it is back, and nothing
answered is missing from the log."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import duckdb
import httpx
import pyarrow.compute as pc
import pytest

from maquette import registry
from maquette.bench.local_cluster import LocalCluster
from maquette.config import Settings, load_settings
from maquette.features.layer import FeatureLayer
from maquette.serving import prediction_log as predictions
from maquette.training import pipeline as training
from tests.conftest import ROOT, copy_feature_tables, make_project
from tests.test_serving import ROW, running_service

pytestmark = pytest.mark.slow
WHEN = "2013-12-31T15:00:00+00:00"


def _replicated(
    folder: Path,
    redis_url: str | None,
    loaded_project: Settings,
    production: dict[str, str],
    registry_settings: dict[str, Any] | None = None,
    **redis: Any,
) -> Settings:
    """The loaded project with its aliases in Redis and a sharded prediction log of its own."""
    folder = make_project(
        folder,
        redis_url,
        redis=redis,
        registry={"alias_store": "redis", **(registry_settings or {})},
        predictions={"stream": "test:replicas:predictions", "shards": 3},
    )
    settings = load_settings(folder)
    copy_feature_tables(loaded_project, settings)
    FeatureLayer(settings).apply()  # the same Feast project: the session's online values
    for tag in production.values():  # the service is ready once every model's alias resolves
        registry.promote(settings, tag, "production")
    return settings


@pytest.fixture(scope="module")
def replicated_on_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    loaded_project: Settings,
    cluster_project: Settings,  # the online values, materialized on the cluster
    redis_cluster: LocalCluster,
    production: dict[str, str],
) -> Settings:
    return _replicated(
        tmp_path_factory.mktemp("replicas-cluster"),
        None,
        loaded_project,
        production,
        cluster=redis_cluster.nodes,
        password=redis_cluster.password,
    )


@pytest.fixture(
    scope="module", params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)]
)
def replicated(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    loaded_project: Settings,
    running_redis: str,
    production: dict[str, str],
) -> Settings:
    """Aliases in Redis and the log sharded over three streams: on one Redis, on the cluster."""
    if request.param == "cluster":
        return cast(Settings, request.getfixturevalue("replicated_on_cluster"))
    return _replicated(
        tmp_path_factory.mktemp("replicas"), running_redis, loaded_project, production
    )


class Load:
    """Requests alternating between replicas until stopped: each answer, each failure."""

    def __init__(self, urls: list[str]) -> None:
        self.urls, self.stop = urls, threading.Event()
        self.answers: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._run)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(1_000_000):
                if self.stop.is_set():
                    return
                url = self.urls[i % len(self.urls)]
                body = {"rows": ROW, "model": "flight_delay@production", "as_of": WHEN}
                try:
                    reply = client.post(f"{url}/predict", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append({"url": url, "status": None, "text": str(exc)})
                    continue
                if reply.status_code != 200:
                    failure = {"url": url, "status": reply.status_code, "text": reply.text}
                    self.failures.append({**failure, "at": time.monotonic()})
                    continue
                (answer,) = reply.json()["predictions"]
                self.answers.append({**answer, "url": url, "at": time.monotonic()})


def _logged_once(settings: Settings, answers: list[dict[str, Any]]) -> None:
    """Every answer is in the drained log, once."""
    predictions.drain(settings)
    folder = settings.path(settings.predictions.folder)
    counts = dict(
        duckdb.sql(
            f"SELECT prediction_id, count(*) FROM read_parquet('{folder}/**/*.parquet') "
            "GROUP BY prediction_id"
        ).fetchall()
    )
    answered = {a["prediction_id"] for a in answers}
    missing = answered - set(counts)
    assert not missing, f"{len(missing)} answered predictions are not in the log"
    assert all(counts[p] == 1 for p in answered)
    assert len(answered) == len(answers)


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
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(running_service(replicated, {})) for _ in range(2)]
        with Load(urls) as load:
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
        routed_to, routed_in = _route_through_the_cli(replicated, urls, before, after)
    registry.promote(replicated, before)  # the next test starts from the session's version
    # A traffic split and a shadow set through the CLI reach both replicas within a second.
    assert routed_to == {url: before for url in urls}
    assert max(routed_in.values()) < 1.0, routed_in
    assert not load.failures, load.failures[:5]
    for url in urls:
        mine = [a for a in load.answers if a["url"] == url]
        assert any(a["model"] == before for a in mine if a["at"] < promoted_at - 0.5), url
        late = [a for a in mine if a["at"] > promoted_at + 1.0]
        assert late and all(a["model"] == after for a in late), url
    _logged_once(replicated, load.answers)
    assert len(load.answers) > 50
    shadows = predictions.read_predictions(replicated).filter(pc.field("shadow"))
    assert after.partition(":")[2] in set(shadows["version"].to_pylist())


def _route_through_the_cli(
    settings: Settings, urls: list[str], before: str, after: str
) -> tuple[dict[str, str], dict[str, float]]:
    """`maquette models route` sends plain `flight_delay` requests to `before`, shadowed by
    `after`; returns the version each replica then answers with and how soon it did."""
    routed = subprocess.run(
        [
            *(sys.executable, "-m", "maquette", "models", "route", "flight_delay"),
            *("--traffic", f"{before.partition(':')[2]}=1", "--shadow", after.partition(":")[2]),
            *("--project", str(settings.project_dir)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    set_at = time.monotonic()
    assert routed.returncode == 0, routed.stderr
    answered: dict[str, str] = {}
    seconds: dict[str, float] = {}
    body = {"rows": ROW, "model": "flight_delay", "as_of": WHEN}
    with httpx.Client(timeout=10) as client:
        while len(seconds) < len(urls) and time.monotonic() - set_at < 10:
            for url in urls:
                (answer,) = client.post(f"{url}/predict", json=body).json()["predictions"]
                if answer["model"] == before and url not in seconds:
                    answered[url], seconds[url] = answer["model"], time.monotonic() - set_at
        for _ in range(10):  # a few more, each scored by the shadow too
            for url in urls:
                client.post(f"{url}/predict", json=body).raise_for_status()
    registry.route(settings, "flight_delay", {}, "")  # no split, no shadow: as before
    return answered, seconds


@pytest.mark.cluster
def test_a_master_killed_under_load_fails_its_share_with_503s_and_loses_nothing_answered(
    replicated_on_cluster: Settings, redis_cluster: LocalCluster
) -> None:
    settings = replicated_on_cluster
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(running_service(settings, {})) for _ in range(2)]
        with Load(urls) as load:
            time.sleep(2)
            answered_before = len(load.answers)
            redis_cluster.processes[1].kill()  # SIGKILL: no shutdown, no final AOF rewrite
            redis_cluster.processes[1].wait(10)
            killed_at = time.monotonic()
            time.sleep(4)
            redis_cluster.start(1)  # from its append-only file and nodes.conf
            redis_cluster.wait_until_ok()
            back_at = time.monotonic()
            time.sleep(4)
    assert answered_before > 10
    # While the master was down: only 503s, each saying which store and what to do.
    assert load.failures, "no request failed while a master was down"
    for failure in load.failures:
        assert failure["status"] == 503, failure
        assert "Redis Cluster" in failure["text"], failure["text"][:300]
        assert killed_at - 1 < failure["at"] < back_at + 3, failure
    # Without replicas, Redis's default (cluster-require-full-coverage yes) stops the whole
    # cluster once the others mark the master failed (cluster-node-timeout, 2 s here): every
    # request fails with that 503 until it is back; then both replicas serve again by themselves.
    after = [a for a in load.answers if a["at"] > back_at + 3]
    assert {a["url"] for a in after} == set(urls)
    # Nothing answered is lost: every answer is in the drained log, once.
    _logged_once(settings, load.answers)


def test_a_replica_with_an_empty_model_store_serves_what_is_promoted_elsewhere(
    tmp_path: Path,
    loaded_project: Settings,
    running_redis: str,
    production: dict[str, str],
) -> None:
    """Two machines, as far as one can show it: the trainer's project and a replica whose own
    BentoML store starts empty, sharing only Redis and `registry.shared_store` (a folder)."""
    shared = tmp_path / "shared-models"
    trainer = _replicated(
        tmp_path / "trainer",
        running_redis,
        loaded_project,
        production,
        {"shared_store": str(shared)},
    )
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        f"{t.replace(':', '-')}.bentomodel" for t in production.values()
    )  # promoting published each version an alias points at
    home = tmp_path / "replica-bentoml"
    replica = _replicated(
        tmp_path / "replica",
        running_redis,
        loaded_project,
        {},  # nothing registered there: its aliases are the trainer's, in Redis
        {"shared_store": str(shared), "bentoml_home": str(home)},
    )
    before = production["flight_delay"]
    after = training.train(loaded_project, "flight_delay", 2).tag
    with running_service(replica, {}) as url:
        # Ready means every served alias resolved: imported from the shared store.
        imported = {f"{m.parent.name}:{m.name}" for m in home.glob("models/*/v*")}
        assert set(production.values()) <= imported
        assert after not in imported
        with Load([url]) as load:
            time.sleep(1)
            registry.promote(trainer, after)  # published, then the alias moves
            promoted_at = time.monotonic()
            deadline = promoted_at + 30
            while not any(a["model"] == after for a in load.answers[-3:]):
                assert time.monotonic() < deadline, "the replica never served the promoted version"
                time.sleep(0.05)
            reached_s = time.monotonic() - promoted_at
            time.sleep(1)
    registry.promote(trainer, before)
    assert not load.failures, load.failures[:3]
    assert any(a["model"] == before for a in load.answers)
    assert after in {f"{m.parent.name}:{m.name}" for m in home.glob("models/*/v*")}
    # An alias move reaches a replica within a second; one whose version must be imported
    # first (a few MB here) takes that long too.
    assert reached_s < 10, reached_s
