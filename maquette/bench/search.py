"""`maquette bench search`: the random search and the tuned search (Optuna: TPE sampler,
successive halving) on the same training data, with the same budget of trials, in one run.

Each search's wall time and its best validation score are measured on the model's prepared
data (its spec as written, with `search.trials` the budget); nothing is registered.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console

from maquette.bench.harness import default_model, results_table
from maquette.config import Settings
from maquette.training.model_types import TrainingData, Trial
from maquette.training.prepare import prepare
from maquette.training.search import best_trial, run_search, search_metric
from maquette.training.tuned_search import run_tuned_search

HEADERS = ("search", "budget", "wall time", "best validation score", "pruned", "trials to best")


def run_search_benchmark(
    settings: Settings, name: str | None, budgets: list[int], console: Console
) -> str:
    """Both searches at each budget (default: the spec's), same data; prints the table,
    returns it as Markdown."""
    name = name or default_model(settings)
    console.print(f"[bold]search[/] of {name}: random vs tuned, same budget and data")
    data = prepare(settings, name)
    rows = []
    for budget in budgets or [data.spec.search.trials]:
        for method, search in (("random", run_search), ("optuna", run_tuned_search)):
            console.print(f"  {method}, {budget} trials ...")
            rows.append(_one(data, method, budget, search))
    title = f"search of {name}: {search_metric(data.spec)} on validation, same data and seed"
    return results_table(console, title, HEADERS, rows) + "\n"


def _one(
    data: TrainingData,
    method: str,
    budget: int,
    search: Callable[[TrainingData, Callable[[str], None]], list[Trial]],
) -> tuple[str, ...]:
    spec = data.spec.model_copy(deep=True)
    spec.search.method, spec.search.trials = method, budget  # type: ignore[assignment]
    data.spec = spec
    began = time.perf_counter()
    trials = search(data, lambda _: None)
    seconds = time.perf_counter() - began
    best = best_trial(spec, trials)
    return (
        method,
        str(budget),
        f"{seconds:.1f} s",
        f"{best.score:.4f}",
        str(sum(t.pruned for t in trials)),
        str(best.number + 1),
    )
