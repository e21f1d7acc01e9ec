"""Evaluate: the model and a naive baseline on validation and test, overall and per partition."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from maquette.training.metrics import best_f1_threshold, binary_metrics, regression_metrics
from maquette.training.model_types import LABEL, PARENT, TrainedModel, TrainingData


def baseline_predictions(data: TrainingData, split: str) -> np.ndarray:
    """The naive baseline: mean training label per `baseline_by` group (global mean if unseen)."""
    train, frame = data.frames["train"], data.frames[split]
    overall = float(train[LABEL].mean())
    if not data.spec.baseline_by:
        return np.full(len(frame), overall)
    means = train.groupby(data.spec.baseline_by, observed=True)[LABEL].mean().rename("__baseline")
    joined = frame[data.spec.baseline_by].join(means, on=data.spec.baseline_by)
    baseline: np.ndarray = joined["__baseline"].fillna(overall).to_numpy(dtype=float)
    return baseline


def evaluate(data: TrainingData, model: TrainedModel) -> dict[str, Any]:
    """Metrics of the model and of the baseline on validation and test, overall and per partition."""
    spec = data.spec
    if spec.task == "binary":
        val_pred, _ = model.predict(data.frames["validation"])
        model.threshold = (
            spec.threshold
            if spec.threshold is not None
            else best_f1_threshold(data.y("validation"), val_pred)
        )
    result: dict[str, Any] = {}
    for split in ("validation", "test"):
        frame, y = data.frames[split], data.y(split)
        pred, used = model.predict(frame)
        base = baseline_predictions(data, split)
        entry = {"model": _score(model, y, pred), "baseline": _score(model, y, base)}
        if spec.partition_by:
            per = {}
            keys = frame[spec.partition_by].astype(object).to_numpy()
            for value in sorted({k for k in keys if k is not None and k == k}):
                mask = keys == value
                per[str(value)] = {
                    "model": _score(model, y[mask], pred[mask]),
                    "baseline": _score(model, y[mask], base[mask]),
                    "served_by": str(value) if value in model.partitions else PARENT,
                }
            entry["partitions"] = per
        entry["routed_rows"] = {k: int(v) for k, v in pd.Series(used).value_counts().items()}
        result[split] = entry
    return result


def _score(model: TrainedModel, y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    if model.task == "regression":
        return regression_metrics(y, pred, model.label_shift)
    return binary_metrics(y, pred, model.threshold if model.threshold is not None else 0.5)
