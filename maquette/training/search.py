"""Search: parameter sets drawn from the spec's space, each fitted on train and scored on validation."""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from maquette.config import Settings
from maquette.errors import InvalidModelSpec
from maquette.model_spec import ModelSpec
from maquette.training.learners import learner_for
from maquette.training.metrics import better, binary_metrics, regression_metrics
from maquette.training.model_types import TrainingData, Trial

_SPACE = re.compile(r"^\s*(uniform|loguniform|int|choice)\((.*)\)\s*$")


def search_space(spec: ModelSpec) -> list[dict[str, Any]]:
    """`spec.search.trials` parameter sets: the fixed params plus random draws from the space."""
    rng = random.Random(spec.search.seed)
    parsed = {name: _parse_dimension(name, text) for name, text in spec.search.space.items()}
    sets = []
    for _ in range(spec.search.trials):
        sets.append({**spec.params, **{name: draw(rng) for name, draw in parsed.items()}})
    return sets


def _parse_dimension(name: str, text: str) -> Any:
    match = _SPACE.match(text)
    if not match:
        raise InvalidModelSpec(
            f"search space for {name!r} does not parse: {text!r}.",
            "Use uniform(a, b), loguniform(a, b), int(a, b) or choice(x, y, ...).",
        )
    kind, raw = match.group(1), [a.strip() for a in match.group(2).split(",") if a.strip()]
    if kind == "choice":
        values = [_scalar(v) for v in raw]
        return lambda rng: rng.choice(values)
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
    if kind == "int":
        return lambda rng: rng.randint(int(low), int(high))
    if kind == "loguniform":
        return lambda rng: float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return lambda rng: rng.uniform(low, high)


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


def run_trial(data: TrainingData, params: dict[str, Any], number: int) -> Trial:
    """Fit one parameter set on train, score it on validation."""
    spec = data.spec
    learner = learner_for(
        spec.algorithm, spec.task, spec.search.seed, spec.search.early_stopping_rounds
    )
    began = time.perf_counter()
    fitted = learner.fit(
        data.x("train"), data.y("train"), data.x("validation"), data.y("validation"), params
    )
    pred = learner.predict(fitted.model, data.x("validation"))
    value = score(spec, data.y("validation"), pred, data.label_shift)[search_metric(spec)]
    return Trial(
        number, params, float(value), fitted.best_iteration, time.perf_counter() - began, fitted
    )


def best_trial(spec: ModelSpec, trials: list[Trial]) -> Trial:
    """The trial with the best search metric (the first one on a tie)."""
    metric = search_metric(spec)
    best = trials[0]
    for trial in trials[1:]:
        if better(metric, trial.score, best.score):
            best = trial
    return best


def run_search(data: TrainingData, announce: Callable[[str], None]) -> list[Trial]:
    """Every trial of the spec's search, in order (one after the other: fits use every core)."""
    spec = data.spec
    results = []
    for number, params in enumerate(search_space(spec)):
        announce(f"trial {number + 1}/{spec.search.trials}")
        results.append(run_trial(data, params, number))
    return results


def ensure_trainable(settings: Settings, name: str) -> ModelSpec:
    """The spec, checked before any work: known model, search space that parses."""
    spec = settings.model_spec(name)
    search_space(spec)
    return spec
