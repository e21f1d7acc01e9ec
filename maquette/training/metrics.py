"""Model quality metrics, shared by training (evaluation) and monitoring (live accuracy).

Regression: R², RMSE, MAE and RMSLE. RMSLE needs non-negative values, but a delay can be
negative (early arrival), so it is computed on the shifted target `y + shift` where `shift`
makes the training window's smallest label 0 (predictions are clipped at the same floor); the
shift is recorded with the metrics. Binary: AUC, log loss, Brier score, precision, recall and F1
at a threshold, and a calibration table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm


def regression_metrics(y: np.ndarray, pred: np.ndarray, shift: float) -> dict[str, float]:
    """R², RMSE, MAE and RMSLE (on y + shift) of predictions."""
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    if len(y) == 0:
        return {"rows": 0}
    log_err = np.log1p(np.clip(pred + shift, 0, None)) - np.log1p(np.clip(y + shift, 0, None))
    return {
        "rows": len(y),
        "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else float("nan"),
        "rmse": float(np.sqrt(np.mean((y - pred) ** 2))),
        "mae": float(np.mean(np.abs(y - pred))),
        "rmsle": float(np.sqrt(np.mean(log_err**2))),
        "rmsle_shift": float(shift),
    }


def best_f1_threshold(y: np.ndarray, proba: np.ndarray) -> float:
    """The probability threshold with the highest F1 (ties: the lowest threshold)."""
    precision, recall, thresholds = skm.precision_recall_curve(y, proba)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5


def calibration(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Mean predicted probability vs observed rate per probability decile."""
    y, proba = np.asarray(y, dtype=float), np.asarray(proba, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(proba, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            table.append(
                {
                    "bin_low": float(edges[b]),
                    "bin_high": float(edges[b + 1]),
                    "rows": int(mask.sum()),
                    "predicted": float(proba[mask].mean()),
                    "observed": float(y[mask].mean()),
                }
            )
    return table


def binary_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC, log loss, Brier, precision/recall/F1 at `threshold`, confusion counts, calibration."""
    y, proba = np.asarray(y, dtype=int), np.asarray(proba, dtype=float)
    if len(y) == 0:
        return {"rows": 0}
    decided = (proba >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, decided, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    return {
        "rows": len(y),
        "auc": float(skm.roc_auc_score(y, proba)) if both else float("nan"),
        "log_loss": float(skm.log_loss(y, np.clip(proba, 1e-6, 1 - 1e-6), labels=[0, 1])),
        "brier": float(np.mean((proba - y) ** 2)),
        "threshold": float(threshold),
        "precision": float(skm.precision_score(y, decided, zero_division=0)),
        "recall": float(skm.recall_score(y, decided, zero_division=0)),
        "f1": float(skm.f1_score(y, decided, zero_division=0)),
        "positive_rate": float(y.mean()),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "calibration": calibration(y, proba),
    }


# Which way is better, per metric (used by search, partition choice and comparisons).
HIGHER_IS_BETTER = {
    "r2": True,
    "rmse": False,
    "mae": False,
    "rmsle": False,
    "auc": True,
    "log_loss": False,
    "brier": False,
    "f1": True,
    "precision": True,
    "recall": True,
}


def better(metric: str, a: float, b: float) -> bool:
    """True when value `a` of `metric` is strictly better than `b`."""
    if np.isnan(b):
        return not np.isnan(a)
    return a > b if HIGHER_IS_BETTER[metric] else a < b
