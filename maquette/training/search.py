"""Search: parameter sets drawn from the spec's space, each fitted on train and scored on validation."""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from maquette.config import Settings
from maquette.errors import InvalidModelSpec
from maquette.model_spec import ModelSpec
from maquette.training.executors import LOCAL, Fits
from maquette.training.learners import fit_threads, learner_for
from maquette.training.metrics import better, binary_metrics, regression_metrics
from maquette.training.model_types import TrainingData, Trial

_SPACE = re.compile(r"^\s*(uniform|loguniform|int|choice)\((.*)\)\s*$")


@dataclass(frozen=True)
class Dimension:
    """One parameter's range: `uniform`, `loguniform`, `int` (low..high) or `choice` (values)."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    values: tuple[Any, ...] = ()

    def draw(self, rng: random.Random) -> Any:
        """A random value (the random search's draw)."""
        if self.kind == "choice":
            return rng.choice(self.values)
        if self.kind == "int":
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return rng.uniform(self.low, self.high)

    def suggest(self, trial: Any, name: str) -> Any:
        """The value an Optuna trial suggests for this range."""
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high))
        return trial.suggest_float(name, self.low, self.high, log=self.kind == "loguniform")


def dimensions(spec: ModelSpec) -> dict[str, Dimension]:
    """The spec's search space, parsed (InvalidModelSpec naming what does not parse)."""
    return {name: _parse_dimension(name, text) for name, text in spec.search.space.items()}


def search_space(spec: ModelSpec) -> list[dict[str, Any]]:
    """`spec.search.trials` parameter sets: the fixed params plus random draws from the space."""
    rng = random.Random(spec.search.seed)
    parsed = dimensions(spec)
    sets = []
    for _ in range(spec.search.trials):
        sets.append({**spec.params, **{name: dim.draw(rng) for name, dim in parsed.items()}})
    return sets


def _parse_dimension(name: str, text: str) -> Dimension:
    match = _SPACE.match(text)
    if not match:
        raise InvalidModelSpec(
            f"search space for {name!r} does not parse: {text!r}.",
            "Use uniform(a, b), loguniform(a, b), int(a, b) or choice(x, y, ...).",
        )
    kind, raw = match.group(1), [a.strip() for a in match.group(2).split(",") if a.strip()]
    if kind == "choice":
        return Dimension(kind, values=tuple(_scalar(v) for v in raw))
    try:
        low, high = (float(v) for v in raw)
    except ValueError:
        raise InvalidModelSpec(
            f"search space for {name!r} needs two numbers: {text!r}.",
            "Write e.g. loguniform(0.01, 0.3).",
        ) from None
    if low > high or (kind == "loguniform" and low <= 0):
        raise InvalidModelSpec(
            f"search space for {name!r} has an empty or invalid range: {text!r}.",
            "Give low < high (and low > 0 for loguniform).",
        )
    return Dimension(kind, low, high)


def _scalar(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip("'\"")


def search_metric(spec: ModelSpec) -> str:
    """The validation metric the search ranks trials by (RMSE or AUC unless the spec says)."""
    return spec.search.metric or ("rmse" if spec.task == "regression" else "auc")


def score(spec: ModelSpec, y: np.ndarray, pred: np.ndarray, shift: float) -> dict[str, Any]:
    """The task's metrics of `pred` against `y` (binary at the spec's threshold, else 0.5)."""
    if spec.task == "regression":
        return regression_metrics(y, pred, shift)
    threshold = spec.threshold if spec.threshold is not None else 0.5
    return binary_metrics(y, pred, threshold)


def run_trial(
    data: TrainingData,
    params: dict[str, Any],
    number: int,
    callbacks: list[Callable[[Any], None]] | None = None,
) -> Trial:
    """Fit one parameter set on train, score it on validation. `callbacks` see each boosting
    iteration (LightGBM's; the tuned search prunes through one)."""
    spec = data.spec
    learner = learner_for(
        spec.algorithm, spec.task, spec.search.seed, spec.search.early_stopping_rounds
    )
    began = time.perf_counter()
    fitted = learner.fit(
        data.x("train"),
        data.y("train"),
        data.x("validation"),
        data.y("validation"),
        params,
        callbacks,
    )
    pred = learner.predict(fitted.model, data.x("validation"))
    value = score(spec, data.y("validation"), pred, data.label_shift)[search_metric(spec)]
    return Trial(
        number, params, float(value), fitted.best_iteration, time.perf_counter() - began, fitted
    )


def best_trial(spec: ModelSpec, trials: list[Trial]) -> Trial:
    """The completed trial with the best search metric (the first one on a tie); a pruned
    trial never wins (it was stopped before its best iteration)."""
    metric = search_metric(spec)
    completed = [t for t in trials if not t.pruned]
    if not completed:  # Optuna prunes a NaN score: every trial scored NaN
        raise InvalidModelSpec(
            f"every one of the {len(trials)} search trials was stopped early: their validation "
            f"{metric} was not a number.",
            "Check the label and the validation window (rows, values), or use search.method: "
            "random to see each trial's score.",
        )
    best = completed[0]
    for trial in completed[1:]:
        if better(metric, trial.score, best.score):
            best = trial
    return best


def run_search(
    data: TrainingData, announce: Callable[[str], None], fits: Fits = LOCAL
) -> list[Trial]:
    """Every trial of the random search, in order: one after the other here, or side by side
    as Ray tasks (`training.executor`). `search.method: optuna` runs `tuned_search` instead."""
    spec = data.spec
    sets = [(params, number) for number, params in enumerate(search_space(spec))]
    # The most any trial runs (num_threads may be drawn from the space too).
    cpus = max(fit_threads(spec.algorithm, params) for params, _ in sets)
    return fits.map(run_trial, data, sets, announce, "trial", cpus)


def ensure_trainable(settings: Settings, name: str) -> ModelSpec:
    """The spec, checked before any work: known model, search space that parses."""
    spec = settings.model_spec(name)
    dimensions(spec)
    return spec
