"""`maquette bench replicas`: the service's c=8 figures with one replica and with two, same run.

Two replicas on one machine share its two cores, so they cannot serve more than one does; what
the figures show is that a second replica costs nothing it should not (no lock, no shared
process between them: each reads Redis and logs to it on its own). One replica gets wrk with 8
connections; two replicas get 4 each at once (no load balancer here): their req/s are added,
and the p50/p95/p99 shown are the higher of the two.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.console import Console

from maquette.bench.harness import free_port, results_table, wait_http
from maquette.bench.serving import (
    MAQUETTE,
    _bench_log_length_and_clear,
    cell,
    request_rows,
    start_server,
    wrk,
)
from maquette.config import Settings

CASES = {"1 row, c=8": 1, "100 rows, c=8": 100}
CONNECTIONS = 8
HEADERS = ("case", "one replica", "two replicas", "two / one (req/s)")


def run_replicas_benchmark(settings: Settings, seconds: int, console: Console) -> str:
    """One replica, then two, each case for `seconds`; prints the table, returns Markdown."""
    rows = request_rows(settings)
    console.print("[bold]replicas[/] (the service alone, then two of it side by side)")
    one = _measure(settings, rows, 1, seconds, console)
    two = _measure(settings, rows, 2, seconds, console)
    cells = [
        (case, cell(one[case]), cell(two[case]), _ratio(two[case], one[case])) for case in CASES
    ]
    title = f"service replicas: req/s and p50/p95/p99 ms ({seconds}s per cell, wrk)"
    return results_table(console, title, HEADERS, cells) + "\n"


def _measure(
    settings: Settings, rows: list[dict[str, Any]], replicas: int, seconds: int, console: Console
) -> dict[str, dict[str, float]]:
    ports = [free_port() for _ in range(replicas)]
    procs = [start_server(MAQUETTE, settings, port) for port in ports]
    urls = [f"http://127.0.0.1:{port}/predict" for port in ports]
    results = {}
    try:
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/")
        for url in urls:
            wrk(url, json.dumps({"rows": rows[:1]}), 2, 3)  # warm-up
        for case, size in CASES.items():
            console.print(f"  {replicas} replica(s): {case} ...")
            body = json.dumps({"rows": rows[:size]})
            conns = [CONNECTIONS // replicas] * replicas
            with ThreadPoolExecutor(replicas) as pool:
                parts = list(pool.map(wrk, urls, [body] * replicas, conns, [seconds] * replicas))
            results[case] = _combined(parts)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):  # one that died already
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        _bench_log_length_and_clear(settings)
    return results


def _combined(parts: list[dict[str, float]]) -> dict[str, float]:
    """Replicas loaded at once: their req/s and errors added, their latencies' worst."""
    if any("error" in p for p in parts):
        return {"error": 1.0}
    return {
        "rps": sum(p["rps"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        **{q: max(p[q] for p in parts) for q in ("p50", "p95", "p99")},
    }


def _ratio(two: dict[str, float], one: dict[str, float]) -> str:
    if "error" in two or "error" in one or not one["rps"]:
        return "-"
    return f"{two['rps'] / one['rps']:.2f}x"
