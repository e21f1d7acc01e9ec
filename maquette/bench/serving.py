"""Serving benchmark (`maquette bench serving`): Maquette's service, the stock composition and
the bare floor, one at a time in the same run, loaded by wrk.

The stock and floor servers are modules of this package (`stock_service`, `bare_asgi`) and the
wrk script ships with it (`wrk_post.lua`), so an installed wheel plus a project folder runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from importlib import resources
from typing import Any

from rich.console import Console

from maquette.bench.dataset import bench_dataset, entity_rows
from maquette.bench.harness import default_model, free_port, results_table, wait_http
from maquette.config import Settings
from maquette.features.layer import FeatureLayer
from maquette.features.redis_cluster import shared_client
from maquette.serving.prediction_log import drained_streams, predictions_in, shards_key
from maquette.serving.server import bentoml_home, service_process

BENCH_PREDICTIONS = "maquette:bench:predictions"
CASES = ("1 row, c=1", "1 row, c=8", "1 row, c=32", "100 rows, c=8")
MAQUETTE, MAQUETTE_API_PATH = "Maquette service", "Maquette, BentoML's API path"
STOCK = "stock: BentoML + get_online_features"
FLOOR = "floor: bare Starlette, no features"
SERVERS = (MAQUETTE, MAQUETTE_API_PATH, STOCK, FLOOR)


def wrk(
    url: str, body: str, connections: int, seconds: int, auth: str | None = None
) -> dict[str, float]:
    """wrk (C, pipelined sockets) against `url`: req/s, p50/p95/p99 in ms, errors; `auth` is
    the Authorization header's value when the service wants a key."""
    if not shutil.which("wrk"):
        raise RuntimeError(
            "wrk is not installed: `apt-get install wrk` (the Makefile's bench target does it)"
        )
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        handle.write(body)
    env = {**os.environ, "WRK_BODY_FILE": handle.name, "WRK_AUTH": auth or ""}
    script = resources.files("maquette.bench") / "wrk_post.lua"
    with resources.as_file(script) as path:
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
        command += ["-s", str(path), url]
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    os.unlink(handle.name)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        return {"error": 1.0}
    rps, p50, p95, p99, errors = (float(v) for v in line.split()[1:])
    return {"rps": rps, "p50": p50, "p95": p95, "p99": p99, "errors": errors}


def request_rows(settings: Settings) -> list[dict[str, Any]]:
    """100 requests' rows for the service's default model, times as ISO 8601 text."""
    spec = settings.model_spec(default_model(settings))
    columns = FeatureLayer(settings).request_keys(spec.feature_service, spec.partition_by)
    rows = entity_rows(settings, columns, bench_dataset(settings).serving_rows_from)
    return [
        {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in rows
    ]


def start_server(label: str, settings: Settings, port: int) -> subprocess.Popen[Any]:
    """One server of the comparison, on loopback, in a session of its own."""
    env = {
        # Logging stays on, into a stream of its own: bench traffic must not reach the
        # project's prediction log (and monitoring); it is deleted after each server.
        "MAQUETTE_PREDICTIONS_STREAM": BENCH_PREDICTIONS,
        "MAQUETTE_SERVING_FAST_PATH": "false" if label == MAQUETTE_API_PATH else "true",
    }
    quiet: dict[str, Any] = {
        "start_new_session": True,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
    }
    if label in (MAQUETTE, MAQUETTE_API_PATH):
        return service_process(settings, "127.0.0.1", port, env, **quiet)
    python = [sys.executable, "-m"]
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if label == STOCK:
        command = [*python, "bentoml", "serve", "maquette.bench.stock_service:StockService"]
    else:
        command = [*python, "uvicorn", "maquette.bench.bare_asgi:app", "--log-level", "warning"]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    env |= {
        "MAQUETTE_PROJECT_DIR": str(settings.project_dir),
        "BENTOML_HOME": bentoml_home(settings),  # the project's model store, as the service's
        "PYTHONWARNINGS": "ignore",
    }
    return subprocess.Popen(
        command + where, cwd=settings.project_dir, env={**inherited, **env}, **quiet
    )


def _load_one_server(
    label: str, settings: Settings, rows: list[dict[str, Any]], seconds: int, console: Console
) -> dict[str, dict[str, float]]:
    """Start one server, run every case against it, stop it; results by case."""
    port = free_port()
    proc = start_server(label, settings, port)
    url = f"http://127.0.0.1:{port}/predict"
    results = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        wrk(url, json.dumps({"rows": rows[:1]}), 2, 3)  # warm-up
        for case, body, conns in zip(CASES, [rows[:1]] * 3 + [rows], (1, 8, 32, 8), strict=True):
            console.print(f"  {label}: {case} ...")
            results[case] = wrk(url, json.dumps({"rows": body}), conns, seconds)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        logged = _bench_log_length_and_clear(settings)
        if label.startswith("Maquette"):
            console.print(f"  {label}: {logged:,} predictions logged")
    return results


def cell(result: dict[str, float]) -> str:
    if "error" in result:
        return "failed"
    errors = f"; {result['errors']:.0f} errors" if result["errors"] else ""
    return (
        f"{result['rps']:,.0f} req/s; "
        f"{result['p50']:.2f} / {result['p95']:.2f} / {result['p99']:.2f}{errors}"
    )


def run_serving_benchmark(settings: Settings, seconds: int, console: Console) -> str:
    """Maquette's service, the stock composition and the bare floor, one at a time, same run."""
    rows = request_rows(settings)
    results = {
        label: _load_one_server(label, settings, rows, seconds, console) for label in SERVERS
    }
    cells = [(case, *(cell(results[label][case]) for label in SERVERS)) for case in CASES]
    title = f"serving: req/s and p50/p95/p99 ms ({seconds}s per cell, wrk)"
    return results_table(console, title, ("case", *SERVERS), cells) + "\n"


def _bench_log_length_and_clear(settings: Settings) -> int:
    """Predictions the bench's servers logged, counted and deleted: every shard of the bench
    stream (predictions.shards) on the project's Redis or cluster, and its shard set."""
    bench = settings.model_copy(deep=True)
    bench.predictions.stream = BENCH_PREDICTIONS
    client = shared_client(bench)
    streams = drained_streams(bench, client)
    logged = 0
    for stream in streams:
        start = "-"
        while entries := client.xrange(stream, start, "+", count=1000):
            logged += sum(len(predictions_in(i, fields)) for i, fields in entries)
            start = "(" + entries[-1][0].decode()
        client.delete(stream)
    client.delete(shards_key(bench))
    return logged
