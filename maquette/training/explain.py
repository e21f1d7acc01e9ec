"""Explain: what the version record says about the data and the model beyond its metrics.

Per-feature distributions of the training window (the drift reference monitoring compares
against), feature importance, and partial dependence of the top numeric features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from maquette.training.model_types import LABEL, TrainedModel, TrainingData


def feature_profiles(frame: pd.DataFrame, features: list[str]) -> dict[str, dict[str, Any]]:
    """Per-feature distribution summaries of the training window (the drift reference)."""
    profiles: dict[str, dict[str, Any]] = {}
    for name in features:
        col = frame[name]
        entry: dict[str, Any] = {"rows": len(col), "nulls": int(col.isna().sum())}
        if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object:
            counts = col.astype(object).value_counts().head(20)
            entry |= {
                "kind": "categorical",
                "distinct": int(col.nunique()),
                "top": {str(k): int(v) for k, v in counts.items()},
            }
        else:
            values = col.dropna().to_numpy(dtype=float)
            if len(values):
                q = np.quantile(values, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
                counts, edges = np.histogram(
                    values, bins=20, range=(q[0], q[-1]) if q[-1] > q[0] else None
                )
                entry |= {
                    "kind": "numeric",
                    "mean": float(values.mean()),
                    "std": float(values.std()),
                    "min": float(values.min()),
                    "max": float(values.max()),
                    "quantiles": dict(
                        zip(
                            ["p1", "p5", "p25", "p50", "p75", "p95", "p99"],
                            (float(v) for v in q),
                            strict=True,
                        )
                    ),
                    "histogram": {
                        "edges": [float(e) for e in edges],
                        "counts": [int(c) for c in counts],
                    },
                }
            else:
                entry |= {"kind": "numeric"}
        profiles[name] = entry
    return profiles


def importance(data: TrainingData, model: TrainedModel) -> dict[str, float]:
    """Relative importance (gain, normalized to 1; permutation importance where no gain exists)."""
    gains = model.learner.gain_importance(model.parent, data.features)
    if gains is None:
        # Imported here: only learners without gain importance (scikit-learn's) need it.
        from sklearn.inspection import permutation_importance

        sample = data.frames["validation"].sample(
            min(2000, len(data.frames["validation"])), random_state=0
        )
        x = model.inputs(sample)

        class _Wrapped:
            def fit(self) -> None: ...
            def predict(self, frame: pd.DataFrame) -> np.ndarray:
                return model.learner.predict(model.parent, frame)

        scoring = "neg_root_mean_squared_error" if model.task == "regression" else None
        result = permutation_importance(
            _Wrapped(),
            x,
            sample[LABEL].to_numpy(),
            n_repeats=2,
            random_state=0,
            scoring=scoring or _brier,
        )
        gains = dict(zip(data.features, np.clip(result.importances_mean, 0, None), strict=True))
    total = sum(gains.values()) or 1.0
    return dict(sorted(((k, float(v) / total) for k, v in gains.items()), key=lambda kv: -kv[1]))


def _brier(estimator: Any, x: pd.DataFrame, y: np.ndarray) -> float:
    return -float(np.mean((estimator.predict(x) - y) ** 2))


def partial_dependence(
    data: TrainingData, model: TrainedModel, features: list[str], points: int = 15, rows: int = 1000
) -> dict[str, dict[str, list[float]]]:
    """Average prediction as each feature sweeps its 5th-95th percentile (others as observed)."""
    sample = data.frames["validation"].sample(
        min(rows, len(data.frames["validation"])), random_state=0
    )
    out = {}
    for name in features:
        if name in model.categories:
            continue
        values = sample[name].dropna().to_numpy(dtype=float)
        if len(values) == 0:
            continue
        grid = np.unique(np.quantile(values, np.linspace(0.05, 0.95, points)))
        averages = []
        for v in grid:
            varied = sample.copy()
            varied[name] = v
            averages.append(
                float(np.mean(model.learner.predict(model.parent, model.inputs(varied))))
            )
        out[name] = {"grid": [float(g) for g in grid], "average_prediction": averages}
    return out
