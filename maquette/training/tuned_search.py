"""The tuned search (`search.method: optuna`): Optuna's TPE sampler proposes each parameter set
from the trials before it (the first ones are the random search's first draws), and successive
halving (ASHA's rule, run one trial at a time) stops a LightGBM trial whose validation score,
at a rung of boosting rounds, is not in the best third of the trials that reached that rung.

Same budget as the random search (`search.trials` trials), same seed, same learner and metric:
only which parameter sets are tried, and how long a bad one runs, differ. Deterministic for a
seed (trials run in order, LightGBM is deterministic). Pruning needs the learner to report
rounds (LightGBM) and the search metric to be the one it reports (rmse, auc); otherwise every
trial runs to the end and only the sampler differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from maquette.training.executors import LOCAL, Fits
from maquette.training.metrics import HIGHER_IS_BETTER
from maquette.training.model_types import TrainingData, Trial
from maquette.training.search import dimensions, run_trial, search_metric, search_space

# The metrics LightGBM reports on the validation set as Maquette computes them.
REPORTED = {"rmse", "auc"}


class _Pruned(Exception):
    """Raised inside LightGBM's loop when the pruner stops a trial."""


def run_tuned_search(
    data: TrainingData, announce: Callable[[str], None], fits: Fits = LOCAL
) -> list[Trial]:
    """Every trial, in order; pruned ones have `pruned=True`, their score where they stopped.
    In this process whatever `fits` says: each trial is sampled from the ones before it, and
    pruning reads its scores as LightGBM reports them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = data.spec
    metric, budget = search_metric(spec), spec.search.trials
    startup = max(1, min(5, budget // 3))
    study = optuna.create_study(
        direction="maximize" if HIGHER_IS_BETTER[metric] else "minimize",
        sampler=optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=startup),
        # Rungs at early stopping's rounds x1, x3, x9, ... (ASHA's own rule). A first rung at
        # x3 kept slow learners that end among the best (20 trials on flight_delay: RMSE
        # 29.369 instead of 29.393), but in the random search's time; from x1 the search is
        # better than the random one in two thirds of its time (BENCHMARKS.md).
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.search.early_stopping_rounds,
            reduction_factor=3,
            min_early_stopping_rate=0,
        ),
    )
    space, prunable = dimensions(spec), spec.algorithm == "lightgbm" and metric in REPORTED
    # The first trials are the random search's first draws: TPE then learns from them, and
    # the tuned search never starts from a worse place than the random one.
    for params in search_space(spec)[:startup]:
        study.enqueue_trial({name: params[name] for name in space})
    results: list[Trial] = []
    for number in range(budget):
        announce(f"trial {number + 1}/{budget} (tuned)")
        trial = study.ask()
        params = {**spec.params, **{name: dim.suggest(trial, name) for name, dim in space.items()}}
        seen: list[tuple[int, float]] = []
        began = time.perf_counter()
        try:
            result = run_trial(
                data, params, number, [_reporter(trial, metric, seen)] if prunable else None
            )
        except _Pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            step, value = seen[-1]
            results.append(
                Trial(number, params, value, step + 1, time.perf_counter() - began, None, True)
            )
            continue
        study.tell(trial, result.score)
        results.append(result)
    return results


def _reporter(trial: Any, metric: str, seen: list[tuple[int, float]]) -> Callable[[Any], None]:
    """A LightGBM callback reporting each round's validation score; raises _Pruned when the
    pruner says so (LightGBM lets an exception from a callback end training)."""

    def report(env: Any) -> None:
        # The search metric by name: a spec's own LightGBM `metric` param may list others.
        found = [e for e in env.evaluation_result_list if e[1] == metric]
        if not found:
            return
        value = float(found[0][2])
        seen.append((env.iteration, value))
        trial.report(value, env.iteration)
        if trial.should_prune():
            raise _Pruned

    report.order = 40  # type: ignore[attr-defined]  # after early stopping's (30)
    return report
