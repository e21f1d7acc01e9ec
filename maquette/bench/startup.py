"""Start-up benchmark (`maquette bench startup`): how long a user waits, each beside its stock
way and its floor, in the same run.

- `maquette --help` against `bentoml --help` (stock) and the interpreter with typer and rich
  imported (the floor of any typer CLI): a timed loop of fresh processes.
- `bentoml serve` ready: Maquette's service (`/readyz` 200: settings read, models loaded, Redis
  reached) against the stock composition (a BentoML service over `FeatureStore`) and the bare
  Starlette floor, the servers of `bench serving`, each started `runs` times.
- `maquette up` (with `--up`): `maquette down`, then the time `maquette up` takes until every
  component answers. It restarts the project's platform: run it on the demo project.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time

import httpx
from rich.console import Console

from maquette.bench.harness import free_port, results_table
from maquette.bench.serving import FLOOR, MAQUETTE, STOCK, start_server
from maquette.config import Settings

HELP_CASES = {
    "maquette --help": [sys.executable, "-m", "maquette", "--help"],
    "stock: bentoml --help": [sys.executable, "-m", "bentoml", "--help"],
    "floor: python + typer + rich imported": [
        sys.executable,
        "-c",
        "import typer, rich.console, rich.progress",
    ],
}


def _timed(command: list[str], cwd: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, capture_output=True, check=True)
    return time.perf_counter() - start


def _figures(seconds: list[float]) -> str:
    return (
        f"{statistics.median(seconds):.2f} s (min {min(seconds):.2f}, "
        f"max {max(seconds):.2f}; {len(seconds)} runs)"
    )


def help_times(runs: int, console: Console) -> dict[str, list[float]]:
    """Each CLI's `--help` in fresh processes, after one warm-up run (the OS file cache)."""
    found = {}
    for label, command in HELP_CASES.items():
        console.print(f"  {label} ...")
        _timed(command)
        found[label] = [_timed(command) for _ in range(runs)]
    return found


def ready_seconds(label: str, settings: Settings, timeout_s: float = 120) -> float:
    """From spawning one of `bench serving`'s servers to its first ready answer."""
    port = free_port()
    start = time.perf_counter()
    proc = start_server(label, settings, port)
    path = "/readyz" if label != FLOOR else "/"
    try:
        deadline = start + timeout_s
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{label} exited with {proc.returncode} before it was ready")
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
                if answer.status_code < 500 and (path == "/" or answer.status_code == 200):
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{label} not ready after {timeout_s:.0f} s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def up_seconds(settings: Settings, runs: int, console: Console) -> list[float]:
    """`maquette down` then a timed `maquette up` (it returns once every component answers)."""
    base = [sys.executable, "-m", "maquette"]
    where = ["--project", str(settings.project_dir)]
    found = []
    for run in range(runs):
        console.print(f"  maquette up, run {run + 1} ...")
        subprocess.run([*base, "down", *where], capture_output=True, check=True)
        found.append(_timed([*base, "up", *where]))
    return found


def run_startup_benchmark(settings: Settings, runs: int, with_up: bool, console: Console) -> str:
    rows = [(label, _figures(t)) for label, t in help_times(max(runs, 5), console).items()]
    for label in (MAQUETTE, STOCK, FLOOR):
        console.print(f"  {label}: start until ready ...")
        rows.append(
            (
                f"serve ready: {label}",
                _figures([ready_seconds(label, settings) for _ in range(runs)]),
            )
        )
    if with_up:
        rows.append(
            ("maquette up, every component ready", _figures(up_seconds(settings, runs, console)))
        )
    return results_table(console, "start-up: median seconds", ("what", "seconds"), rows) + "\n"
