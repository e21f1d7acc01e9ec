"""Durability benchmark (`maquette bench durability`): the cost of `redis.appendfsync: always`
on the serving path, next to the default `everysec`, same service, same load, same run.

Every answered prediction is XADDed to the prediction log before the reply, so the AOF policy
of the Redis holding the log is on the request path. One service is started; Redis's policy is
switched with CONFIG SET between the wrk runs (each case runs under both policies back to
back) and put back afterwards.
"""

from __future__ import annotations

import json
import os
import signal

import redis
from rich.console import Console

from maquette.bench.harness import free_port, results_table, wait_http

# The serving benchmark's load generator, request rows and server start, reused as they are.
from maquette.bench.serving import (
    MAQUETTE,
    _bench_log_length_and_clear,
    _cell,
    _request_rows,
    _start,
    _wrk,
)
from maquette.config import Settings
from maquette.data.redis_server import redis_url

POLICIES = ("everysec", "always")
CASES = (("1 row, c=8", 1, 8), ("1 row, c=32", 1, 32), ("100 rows, c=8", 100, 8))


def run_durability_benchmark(settings: Settings, seconds: int, console: Console) -> str:
    """wrk against Maquette's service with the log's Redis on everysec, then always, per case."""
    rows = _request_rows(settings)
    client = redis.Redis.from_url(redis_url(settings), decode_responses=True)
    saved = client.config_get("appendfsync")["appendfsync"]
    aof = client.config_get("appendonly")["appendonly"]
    port = free_port()
    proc = _start(MAQUETTE, settings, port)
    url = f"http://127.0.0.1:{port}/predict"
    results: dict[tuple[str, str], dict[str, float]] = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        _wrk(url, json.dumps({"rows": rows[:1]}), 2, 3)  # warm-up
        for case, count, connections in CASES:
            for policy in POLICIES:
                client.config_set("appendfsync", policy)
                console.print(f"  {case}, appendfsync {policy} ...")
                body = json.dumps({"rows": rows[:count]})
                results[(case, policy)] = _wrk(url, body, connections, seconds)
    finally:
        client.config_set("appendfsync", saved)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        console.print(f"  {_bench_log_length_and_clear(settings):,} predictions logged")
    cells = [(case, *(_cell(results[(case, p)]) for p in POLICIES)) for case, _, _ in CASES]
    title = (
        f"appendfsync on the serving path: req/s and p50/p95/p99 ms ({seconds}s per cell, wrk; "
        f"appendonly {aof})"
    )
    headers = ("case", *(f"appendfsync {p}" for p in POLICIES))
    return results_table(console, title, headers, cells) + "\n"
