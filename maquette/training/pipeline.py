"""Train and evaluate a declared model: Michelangelo's "train" and "evaluate" steps, in order.

Steps (each a plain function in its own module; the Prefect flow in flows/train.py wraps them
as tasks): `prepare` builds the time-split training frame through the feature layer; `search`
fits one parameter set per trial; `partitions` trains a model per partition value and keeps it
only when it beats the parent on its own validation slice; `evaluate` scores validation and
test, overall, per partition and against a naive baseline. `train` runs them all in order and
registers the version with its record and reports.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from maquette import registry
from maquette.config import Settings
from maquette.data.shared_files import exclusive, lock_path
from maquette.training.evaluate import evaluate
from maquette.training.executors import fit_executor
from maquette.training.model_types import TrainedModel, TrainingData, Trial
from maquette.training.partitions import fit_partitions
from maquette.training.prepare import prepare_and_store
from maquette.training.records import build_record
from maquette.training.report import write_model_report
from maquette.training.search import best_trial, ensure_trainable, run_search
from maquette.training.tuned_search import run_tuned_search

# `ensure_trainable` is part of this module's API: the CLI checks a spec before starting a run.
__all__ = ["direct", "ensure_trainable", "train"]


def direct(label: str, fn: Any, *args: Any) -> Any:
    """Run a step as a plain call (the Prefect flow passes a runner that makes it a task)."""
    return fn(*args)


def train(
    settings: Settings,
    name: str,
    trials: int | None = None,
    announce: Callable[[str], None] = lambda _: None,
    step: Any = direct,
) -> registry.ModelVersion:
    """Prepare, search, partition, evaluate, register: one training run, step by step."""
    started = datetime.now(UTC)
    spec = ensure_trainable(settings, name)
    if trials:
        settings = settings.model_copy(deep=True)
        settings.models[name].search.trials = trials
        spec = settings.models[name]
    announce("building the training frame")
    data = step("prepare", prepare_and_store, settings, name)
    # One task for the whole search: on two cores trials cannot run side by side locally, and
    # each task costs API round trips and server work that compete with the fits for CPU. On
    # Ray (training.executor) the search's trials and the partition fits fan out inside it.
    search = run_tuned_search if spec.search.method == "optuna" else run_search
    with fit_executor(settings.training) as fits:
        if fits.ray:
            announce(f"fits on Ray: {fits.where['workers']} CPUs")
        results = step("search", search, data, announce, fits)
        best = best_trial(spec, results)
        announce("partition models" if spec.partition_by else "final model")
        model, decisions = step("fit-partitions", fit_partitions, data, best, fits)
    announce("evaluating on validation and test")
    evaluation = step("evaluate", evaluate, data, model)

    def register() -> registry.ModelVersion:
        return _register(
            settings, data, model, results, best, decisions, evaluation, started, fits.where
        )

    announce("writing the record and reports, registering")
    version: registry.ModelVersion = step("register", register)
    return version


def _register(
    settings: Settings,
    data: TrainingData,
    model: TrainedModel,
    trials: list[Trial],
    best: Trial,
    decisions: list[dict[str, Any]],
    evaluation: dict[str, Any],
    started: datetime,
    executor: dict[str, Any],
) -> registry.ModelVersion:
    """The new version: its record built, its models, record and reports in the model store.

    Numbered and registered under the model's lock: two runs finishing at once (a schedule
    and a retrain on an alert) get v7 and v8, not both v7."""
    with exclusive(lock_path(settings, f"register-{data.name}")):
        version = registry.next_version(settings, data.name)
        record = build_record(
            data.name,
            version,
            data,
            model,
            trials,
            best,
            decisions,
            evaluation,
            started,
            datetime.now(UTC),
            settings.project_dir,
            executor,
        )
        return registry.register(
            settings,
            version,
            record,
            model.save,
            lambda folder, rec: write_model_report(folder, rec, data, model),
        )
