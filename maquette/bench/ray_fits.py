"""`maquette bench ray`: the random search's trials on the local executor and as Ray tasks,
same data and seed, in one run; and Ray's own cost per task.

Each search runs on the model's prepared data (its spec as written, `--trials` the budget,
LightGBM's threads per fit set per case); nothing is registered. A Ray of N CPUs is started for
its case (`ray.init(num_cpus=N)`, its start timed apart) and stopped after; each fit asks as
many CPUs as it has threads, so 2-thread fits run one at a time on two CPUs and 1-thread fits
two at once. The floor is the local time at the same threads divided by the fits that run side
by side. Ray's overhead per task is measured with empty tasks (no data, no fit).
"""

from __future__ import annotations

import time

from rich.console import Console

from maquette.bench.harness import default_model, results_table
from maquette.config import Settings
from maquette.model_spec import TrainingSettings
from maquette.training.executors import LOCAL, fit_executor
from maquette.training.model_types import TrainingData, Trial
from maquette.training.prepare import prepare
from maquette.training.search import best_trial, run_search

HEADERS = (
    "executor",
    "Ray CPUs",
    "threads per fit",
    "search wall time",
    "vs local, same threads",
    "floor",
    "best score",
    "Ray start",
)
EMPTY_TASKS = 200
# (executor, Ray CPUs, LightGBM threads per fit): the spec's 2 threads, and 1 thread, where
# two fits fit side by side on two cores.
CASES = (("local", 0, 2), ("ray", 2, 2), ("local", 0, 1), ("ray", 1, 1), ("ray", 2, 1))


def run_ray_benchmark(settings: Settings, name: str | None, trials: int, console: Console) -> str:
    """Prints the table and returns it as Markdown."""
    name = name or default_model(settings)
    console.print(f"[bold]ray[/]: {trials} trials of {name}, local vs Ray")
    data = prepare(settings, name)
    base = data.spec.model_copy(deep=True)
    base.search.trials = trials
    local: dict[int, tuple[float, list[Trial]]] = {}
    rows, per_task = [], ""
    for executor, workers, threads in CASES:
        console.print(f"  {executor}, {workers or 1} CPU(s), {threads} thread(s) per fit ...")
        data.spec = base.model_copy(deep=True)
        data.spec.params = {**base.params, "num_threads": threads}
        began = time.perf_counter()
        if executor == "local":
            trials_run, start = run_search(data, lambda _: None, LOCAL), ""
            local[threads] = (time.perf_counter() - began, trials_run)
        else:
            with fit_executor(TrainingSettings(executor="ray", ray_workers=workers)) as fits:
                start = f"{time.perf_counter() - began:.1f} s"
                began = time.perf_counter()
                trials_run = run_search(data, lambda _: None, fits)
                if not per_task:
                    per_task = _empty_task_ms()
        seconds = time.perf_counter() - began
        reference_s, reference = local[threads]
        same = [(t.params, t.score) for t in trials_run] == [(t.params, t.score) for t in reference]
        side_by_side = max(1, workers // threads)
        rows.append(
            (
                executor,
                str(workers) if workers else "",
                str(threads),
                f"{seconds:.1f} s",
                f"{reference_s / seconds:.2f}x",
                f"{reference_s / side_by_side:.1f} s" if workers else "",
                _best(data, trials_run) + ("" if same else " (trials differ!)"),
                start,
            )
        )
    title = f"{trials} search trials of {name}, same data and seed; Ray: {per_task} per empty task"
    return results_table(console, title, HEADERS, rows) + "\n"


def _best(data: TrainingData, trials: list[Trial]) -> str:
    best = best_trial(data.spec, trials)
    return f"{best.score:.4f} (trial {best.number + 1})"


def _noop(shared: object, i: int) -> int:
    return i


def _empty_task_ms() -> str:
    """Milliseconds of Ray's scheduling, transfer and result per task, from empty tasks."""
    import ray

    remote = ray.remote(num_cpus=1)(_noop)
    ray.get([remote.remote(None, i) for i in range(10)])  # warm the workers
    began = time.perf_counter()
    ray.get([remote.remote(None, i) for i in range(EMPTY_TASKS)])
    return f"{(time.perf_counter() - began) / EMPTY_TASKS * 1000:.1f} ms"
