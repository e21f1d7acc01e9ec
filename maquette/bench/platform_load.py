"""`maquette bench serving --platform`: the service that `maquette up` started, with every other
component alive (Prefect's server, the deployments runner with the drain on its schedule, the
stream processor), loaded from a separate wrk process; first, each component's CPU over a
minute of the idle platform: the whole process tree of each, from the counters in
/proc/PID/stat that ps and pidstat read (so it needs nothing installed).

The load is real traffic: it is logged, drained and monitored like any other, so run it on the
demo project or a scratch one, not on a project whose monitoring people read.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console

from maquette.bench.harness import results_table
from maquette.bench.serving import CASES, cell, request_rows, wrk
from maquette.config import Settings
from maquette.errors import ConfigError
from maquette.platform import supervisor
from maquette.serving.prediction_log import pending

# The cases of the isolated benchmark, plus what the target names (c=8).
LOADS = tuple(zip(CASES, (1, 8, 32, 8), (1, 1, 1, 100), strict=True))


def _processes() -> dict[int, tuple[int, int]]:
    """Every process: pid -> (parent pid, CPU ticks of it and its waited-for children), from
    /proc/PID/stat, the counters ps, top and pidstat read."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        # After the command: state, ppid, ..., utime, stime, cutime, cstime (fields 14-17).
        found[int(stat.parent.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]))
    return found


def component_processes(settings: Settings) -> dict[str, int]:
    """Each running component's main pid, from the supervisor."""
    return {
        name: info.pid
        for name, info in supervisor.programs(settings).items()
        if info.state == "RUNNING" and info.pid
    }


def cpu_ticks(roots: dict[str, int]) -> dict[str, dict[int, int]]:
    """Per component, the CPU ticks of each process in its tree (the root and descendants)."""
    processes = _processes()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _) in processes.items():
        children[parent].append(pid)
    trees: dict[str, dict[int, int]] = {}
    for name, root in roots.items():
        tree, todo = {}, [root]
        while todo:
            pid = todo.pop()
            if pid in processes:
                tree[pid] = processes[pid][1]
                todo.extend(children.get(pid, []))
        trees[name] = tree
    return trees


def cpu_percent(
    before: dict[str, dict[int, int]], after: dict[str, dict[int, int]], seconds: float
) -> dict[str, float]:
    """% of one core each component used between two `cpu_ticks`: processes started in between
    count whole; children that exited and were waited for are in their parent's counters."""
    hertz = os.sysconf("SC_CLK_TCK")
    return {
        name: 100.0
        * sum(ticks - before.get(name, {}).get(pid, 0) for pid, ticks in tree.items())
        / hertz
        / seconds
        for name, tree in after.items()
    }


def measure_cpu(roots: dict[str, int], seconds: float) -> dict[str, float]:
    """% of one core each component uses over `seconds` from now."""
    before, start = cpu_ticks(roots), time.monotonic()
    time.sleep(seconds)
    return cpu_percent(before, cpu_ticks(roots), time.monotonic() - start)


def _wait_until_drained(settings: Settings, console: Console, timeout_s: float = 600) -> None:
    """Idle means no traffic left to move: earlier traffic's log is drained (by the schedule)
    first, so the idle minute measures the platform at rest, not the last run's drain."""
    deadline = time.monotonic() + timeout_s
    while (left := pending(settings)) and time.monotonic() < deadline:
        console.print(f"  waiting for the scheduled drain: {left:,} log entries pending ...")
        time.sleep(15)


def run_platform_serving_benchmark(
    settings: Settings, seconds: int, idle_seconds: int, console: Console
) -> str:
    """Idle CPU per component, then the platform's own service under load (its CPU beside)."""
    roots = component_processes(settings)
    if "service" not in roots:
        raise ConfigError(
            "the platform's service is not running",
            remedy="start the platform first: `maquette up` (after `maquette demo` or training)",
        )
    _wait_until_drained(settings, console)
    console.print(f"  idle platform: each component's CPU over {idle_seconds} s ...")
    idle_cpu = measure_cpu(roots, idle_seconds)
    url = f"http://{settings.serving.host}:{settings.serving.port}/predict"
    key = settings.serving.api_key
    auth = f"Bearer {key.get_secret_value()}" if key is not None else None
    rows = request_rows(settings)
    results: dict[str, dict[str, float]] = {}
    before, start = cpu_ticks(roots), time.monotonic()
    for case, connections, count in LOADS:
        console.print(f"  platform service: {case} ...")
        results[case] = wrk(url, json.dumps({"rows": rows[:count]}), connections, seconds, auth)
    load_cpu = cpu_percent(before, cpu_ticks(roots), time.monotonic() - start)
    title = f"serving under `maquette up`: req/s and p50/p95/p99 ms ({seconds}s per cell, wrk)"
    markdown = results_table(
        console,
        title,
        ("case", "service started by maquette up"),
        [(case, cell(results[case])) for case, *_ in LOADS],
    )
    cores = os.cpu_count() or 1
    cpu_rows = [
        (name, f"{idle_cpu[name]:.1f}", f"{load_cpu.get(name, 0.0):.1f}")
        for name in sorted(idle_cpu)
    ]
    cpu_title = (
        f"component CPU, % of one core ({cores} cores; process trees, /proc counters as "
        f"pidstat reads them): idle over {idle_seconds} s, and during the load above"
    )
    markdown += "\n" + results_table(
        console, cpu_title, ("component", "idle", "under load"), cpu_rows
    )
    return markdown + "\n"
