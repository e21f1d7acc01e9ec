"""What every benchmark shares: the scratch Feast project, child processes, timing, peak RSS,
result tables.

Heavy cases run in a fresh interpreter (`run_child`) that reports its own wall time and peak
RSS, so one case's memory never hides in another's.
"""

from __future__ import annotations

import hashlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from maquette.config import Settings
from maquette.data.redis_server import ensure_redis
from maquette.data.secrets import write_private
from maquette.errors import ConfigError

BENCH_PROJECT = "maquette_bench"
BENCH_DB = 1  # a Redis database of its own, flushed between cases


# ---------------------------------------------------------------- the scratch project


def bench_dir(settings: Settings) -> Path:
    """Where the benchmarks keep their tables and registry: `<state>/bench`."""
    return settings.state_dir / "bench"


def bench_settings(settings: Settings) -> Settings:
    """The project's settings pointed at a scratch Feast project and Redis database."""
    url = ensure_redis(settings).rsplit("/", 1)[0] + f"/{BENCH_DB}"
    bench = settings.model_copy(deep=True)
    bench.redis.url = url
    bench.feast.project = BENCH_PROJECT
    bench.feast.registry = bench_dir(settings) / "registry.db"
    return bench


# Settings fields holding credentials: dumped as "**********", so given to a child by value.
SECRET_FIELDS = (("redis", "password"), ("serving", "api_key"), ("orchestration", "prefect_auth"))


def settings_ref(settings: Settings) -> str:
    """A child process's settings, as the path of a 0600 file (not on its command line, which
    any local user can read: `redis.url` carries the Redis password)."""
    data = json.loads(settings.model_dump_json())
    for section, name in SECRET_FIELDS:
        value = getattr(getattr(settings, section), name)
        if value is not None:
            data[section][name] = value.get_secret_value()
    folder = bench_dir(settings) / "children"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps(data)
    path = folder / f"settings-{hashlib.sha1(text.encode()).hexdigest()[:16]}.json"
    write_private(path, text)
    return str(path)


def settings_from_ref(ref: str) -> Settings:
    """The settings `settings_ref` wrote."""
    return Settings.model_validate_json(Path(ref).read_text())


def flush(bench: Settings) -> None:
    """Empty the bench's Redis database."""
    redis.Redis.from_url(str(bench.redis.url)).flushdb()


def default_model(settings: Settings) -> str:
    """The model a request naming none gets from the service: the first one declared."""
    name = next(iter(settings.models), None)
    if name is None:
        raise ConfigError("no model is declared.", "Declare one under models: in maquette.yaml.")
    return name


# ---------------------------------------------------------------- measuring

# Children silence warnings before importing anything: libraries' notices are not results.
_QUIET = "import json, sys, warnings; warnings.filterwarnings('ignore'); "


def peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage: Linux carries ru_maxrss across exec, so a child
    would report its parent's peak; VmHWM starts afresh with the new program."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(module: str, kind: str, settings_json: str, arg: str) -> dict[str, Any]:
    """Run one heavy case (`module._child_main(kind, settings_json, arg)`) in a fresh
    interpreter; it prints a JSON dict ({"seconds", "rows", "rss_mb", ...}) on its last line.
    A failed child gives {"error": its last line of stderr}."""
    code = (
        f"from {module} import _child_main; "
        f"print(json.dumps(_child_main({kind!r}, sys.argv[1], sys.argv[2])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", _QUIET + code, settings_json, arg],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def python_process(code: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """`python -c code args...` in a session of its own (so it can be signalled alone)."""
    return subprocess.Popen(
        [sys.executable, "-c", _QUIET + code, *args], text=True, start_new_session=True, **popen
    )


def latencies(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """p50 and p99 in ms of `repeats` calls of `fn`, after a warm-up of up to 50 calls."""
    for _ in range(min(50, repeats)):
        fn()
    samples = []
    for _ in range(repeats):
        began = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - began) / 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 120) -> None:
    """Return once `url` answers at all (any status); TimeoutError after `timeout` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise TimeoutError(url)


# ---------------------------------------------------------------- result tables


def results_table(
    console: Console, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]
) -> str:
    """Print the rows as a rich table; return the same as Markdown (no final newline)."""
    table = Table(*headers, title=title)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for cells in rows:
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    return "\n".join(lines)
