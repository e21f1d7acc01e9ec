"""Partitions: a model per partition value, kept only where it beats the parent on its own slice."""

from __future__ import annotations

from typing import Any

from maquette.training.executors import LOCAL, Fits
from maquette.training.learners import fit_threads, learner_for
from maquette.training.metrics import better
from maquette.training.model_types import TrainedModel, TrainingData, Trial
from maquette.training.search import score, search_metric


def fit_partitions(
    data: TrainingData, best: Trial, fits: Fits = LOCAL
) -> tuple[TrainedModel, list[dict[str, Any]]]:
    """The parent (best trial) plus partition models that beat it on their validation slice;
    one fit per partition, in order here or side by side on Ray (`training.executor`)."""
    spec = data.spec
    learner = learner_for(
        spec.algorithm, spec.task, spec.search.seed, spec.search.early_stopping_rounds
    )
    assert best.fitted is not None
    model = TrainedModel(
        data.name,
        spec.task,
        spec.algorithm,
        data.features,
        data.categories,
        learner,
        best.fitted.model,
        spec.partition_by,
        label_shift=data.label_shift,
    )
    decisions: list[dict[str, Any]] = []
    if not spec.partition_by:
        return model, decisions
    values = sorted(data.frames["train"][spec.partition_by].dropna().unique())
    cpus = fit_threads(spec.algorithm, best.params)
    items = [(v,) for v in values]
    outcomes = fits.map(_decide, (data, model, best), items, what="partition", cpus=cpus)
    for value, (decision, own) in zip(values, outcomes, strict=True):
        if own is not None:
            model.partitions[str(value)] = own
        decisions.append(decision)
    return model, decisions


def _decide(
    shared: tuple[TrainingData, TrainedModel, Trial], value: Any
) -> tuple[dict[str, Any], Any | None]:
    return _partition_decision(*shared, value)


def _partition_decision(
    data: TrainingData, model: TrainedModel, best: Trial, value: Any
) -> tuple[dict[str, Any], Any | None]:
    """Whether partition `value` gets its own model (and why), and that model if it does."""
    spec, learner = data.spec, model.learner
    assert spec.partition_by is not None
    metric = search_metric(spec)
    train, val = data.frames["train"], data.frames["validation"]
    t_mask, v_mask = train[spec.partition_by] == value, val[spec.partition_by] == value
    decision: dict[str, Any] = {
        "partition": str(value),
        "train_rows": int(t_mask.sum()),
        "validation_rows": int(v_mask.sum()),
        "metric": metric,
    }
    if t_mask.sum() < spec.min_partition_rows or v_mask.sum() == 0:
        decision |= {
            "kept": False,
            "reason": f"fewer than {spec.min_partition_rows} training rows"
            if t_mask.sum() < spec.min_partition_rows
            else "no validation rows",
        }
        return decision, None
    x_val, y_val = data.x("validation")[v_mask], data.y("validation")[v_mask]
    own = learner.fit(data.x("train")[t_mask], data.y("train")[t_mask], x_val, y_val, best.params)
    own_score = score(spec, y_val, learner.predict(own.model, x_val), data.label_shift)[metric]
    parent_score = score(spec, y_val, learner.predict(model.parent, x_val), data.label_shift)[
        metric
    ]
    kept = better(metric, own_score, parent_score)
    decision |= {
        "kept": kept,
        "own": float(own_score),
        "parent": float(parent_score),
        "reason": "beats the parent on its validation slice"
        if kept
        else "the parent is as good or better on its validation slice",
    }
    return decision, own.model if kept else None
