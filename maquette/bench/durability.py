"""Durability benchmark (`maquette bench durability`): the cost of `redis.appendfsync: always`
on the serving path, next to the default `everysec`, same service, same load, same run.

Every answered prediction is XADDed to the prediction log before the reply, so the AOF policy
of the Redis holding the log is on the request path. One service is started; the embedded Redis is
restarted with each policy (CONFIG is disabled on it, so a running server cannot be switched;
its AOF keeps the data over a restart, the service reconnects), every case under one policy,
then under the other, and the project's own policy is restored at the end. A user-given
`redis.url` is not Maquette's to restart: the benchmark says so.
"""

from __future__ import annotations

import json
import os
import signal

from rich.console import Console

from maquette.bench.harness import free_port, results_table, wait_http

# The serving benchmark's load generator, request rows and server start, reused as they are.
from maquette.bench.serving import (
    MAQUETTE,
    _bench_log_length_and_clear,
    cell,
    request_rows,
    start_server,
    wrk,
)
from maquette.config import Settings
from maquette.data import redis_server
from maquette.errors import ConfigError

POLICIES = ("everysec", "always")
CASES = (("1 row, c=8", 1, 8), ("1 row, c=32", 1, 32), ("100 rows, c=8", 100, 8))


def _restart_with(settings: Settings, policy: str) -> None:
    """The embedded Redis stopped and started again with `appendfsync: policy`."""
    redis_server.stop(settings)
    with_policy = settings.model_copy(deep=True)
    with_policy.redis.appendfsync = policy  # type: ignore[assignment]
    redis_server.ensure_redis(with_policy)


def run_durability_benchmark(settings: Settings, seconds: int, console: Console) -> str:
    """wrk against Maquette's service with the log's Redis on everysec, then always, per case."""
    if settings.redis.url or redis_server.is_supervised(settings):
        raise ConfigError(
            "the durability benchmark restarts the embedded Redis with each appendfsync policy, "
            "and this project's Redis is "
            + ("given by redis.url" if settings.redis.url else "kept running by `maquette up`"),
            "Run it on a project with the embedded Redis and without `maquette up` "
            "(`maquette down` first).",
        )
    rows = request_rows(settings)
    saved = settings.redis.appendfsync
    port = free_port()
    proc = start_server(MAQUETTE, settings, port)
    url = f"http://127.0.0.1:{port}/predict"
    results: dict[tuple[str, str], dict[str, float]] = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        for policy in POLICIES:
            _restart_with(settings, policy)
            wrk(url, json.dumps({"rows": rows[:1]}), 2, 3)  # warm-up, reconnected
            for case, count, connections in CASES:
                console.print(f"  {case}, appendfsync {policy} ...")
                body = json.dumps({"rows": rows[:count]})
                results[(case, policy)] = wrk(url, body, connections, seconds)
    finally:
        _restart_with(settings, saved)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        console.print(f"  {_bench_log_length_and_clear(settings):,} predictions logged")
    cells = [(case, *(cell(results[(case, p)]) for p in POLICIES)) for case, _, _ in CASES]
    title = (
        f"appendfsync on the serving path: req/s and p50/p95/p99 ms ({seconds}s per cell, wrk; "
        "appendonly yes)"
    )
    headers = ("case", *(f"appendfsync {p}" for p in POLICIES))
    return results_table(console, title, headers, cells) + "\n"
