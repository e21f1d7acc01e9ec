"""Learners: fit, predict, save and load one model, the same way for every algorithm.

`lightgbm` (default) trains boosters with early stopping on the validation window and saves
them as LightGBM's text format. The scikit-learn learners (`hist_gradient_boosting`, and `ridge`
or `logistic_regression` as linear baselines) are saved with joblib; they are only ever loaded
from Maquette's own model store, never from a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd


@dataclass
class Fitted:
    """A fitted model and what fitting it found out."""

    model: Any
    best_iteration: int | None = None


class Learner(Protocol):
    """What training needs from an algorithm."""

    def fit(
        self,
        x: pd.DataFrame,
        y: np.ndarray,
        x_val: pd.DataFrame,
        y_val: np.ndarray,
        params: dict[str, Any],
        callbacks: list[Any] | None = None,
    ) -> Fitted: ...
    def predict(self, model: Any, x: pd.DataFrame) -> np.ndarray: ...
    def save(self, model: Any, path: Path) -> str: ...
    def load(self, path: Path) -> Any: ...
    def gain_importance(self, model: Any, features: list[str]) -> dict[str, float] | None: ...


# Up to this many rows, LightGBM predicts on the calling thread.
SINGLE_THREAD_ROWS = 1_000


# Threads of one LightGBM fit unless the spec's params set num_threads. The thread count is part
# of what makes a fit deterministic: a run on Ray gives each fit as many CPUs, never fewer.
LIGHTGBM_THREADS = 2


# LightGBM's names for its thread count.
THREAD_PARAMS = ("num_threads", "num_thread", "nthread", "nthreads", "n_jobs")


def fit_threads(algorithm: str, params: dict[str, Any], cpus: int = 0) -> int:
    """The CPUs one fit of this learner keeps busy: LightGBM's threads under any of its names
    (0 or less: every core, `cpus` when known); 1 for scikit-learn."""
    if algorithm != "lightgbm":
        return 1
    given = next((params[k] for k in THREAD_PARAMS if k in params), LIGHTGBM_THREADS)
    threads = int(given)
    return threads if threads > 0 else max(1, cpus or os.cpu_count() or 1)


class LightGBMLearner:
    """Gradient-boosted trees; `n_estimators` caps the rounds, early stopping picks the best."""

    def __init__(self, task: str, seed: int, early_stopping_rounds: int) -> None:
        self.task, self.seed, self.rounds = task, seed, early_stopping_rounds

    def fit(
        self,
        x: pd.DataFrame,
        y: np.ndarray,
        x_val: pd.DataFrame,
        y_val: np.ndarray,
        params: dict[str, Any],
        callbacks: list[Any] | None = None,
    ) -> Fitted:
        """`callbacks`: LightGBM's, called after each boosting round (after early stopping's)."""
        params = dict(params)
        n_estimators = int(params.pop("n_estimators", 500))
        base = {
            "objective": "regression" if self.task == "regression" else "binary",
            "metric": "rmse" if self.task == "regression" else "auc",
            "verbosity": -1,
            "seed": self.seed,
            "num_threads": LIGHTGBM_THREADS,
            "deterministic": True,
        }
        train = lgb.Dataset(x, y, free_raw_data=False)
        valid = lgb.Dataset(x_val, y_val, reference=train) if len(x_val) else None
        stopping: list[Any] = (
            [lgb.early_stopping(self.rounds, verbose=False)] if valid is not None else []
        )
        booster = lgb.train(
            {**base, **params},
            train,
            num_boost_round=n_estimators,
            valid_sets=[valid] if valid is not None else None,
            callbacks=stopping + list(callbacks or []),
        )
        return Fitted(booster, booster.best_iteration or n_estimators)

    def predict(self, model: lgb.Booster, x: pd.DataFrame | np.ndarray) -> np.ndarray:
        # Online-sized inputs on one thread: OpenMP workers spinning between tiny requests
        # took a quarter of a serving core and stretched tail latency. Rows are scored
        # independently, so the answer does not depend on the thread count.
        iteration = model.best_iteration or None
        if len(x) <= SINGLE_THREAD_ROWS:
            return np.asarray(model.predict(x, num_iteration=iteration, num_threads=1))
        return np.asarray(model.predict(x, num_iteration=iteration))

    def save(self, model: lgb.Booster, path: Path) -> str:
        target = path.with_suffix(".lgb.txt")
        model.save_model(str(target), num_iteration=model.best_iteration or None)
        return target.name

    def load(self, path: Path) -> lgb.Booster:
        return lgb.Booster(model_file=str(path))

    def gain_importance(self, model: lgb.Booster, features: list[str]) -> dict[str, float]:
        gains = model.feature_importance(importance_type="gain")
        return dict(zip(model.feature_name(), (float(g) for g in gains), strict=True))


class SklearnLearner:
    """scikit-learn estimators behind the same interface (categoricals one-hot or native)."""

    def __init__(self, algorithm: str, task: str, seed: int) -> None:
        self.algorithm, self.task, self.seed = algorithm, task, seed

    def _estimator(self, x: pd.DataFrame, params: dict[str, Any]) -> Any:
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        if self.algorithm == "hist_gradient_boosting":
            cls = (
                HistGradientBoostingRegressor
                if self.task == "regression"
                else HistGradientBoostingClassifier
            )
            return cls(categorical_features="from_dtype", random_state=self.seed, **params)
        categorical = [c for c in x.columns if isinstance(x[c].dtype, pd.CategoricalDtype)]
        numeric = [c for c in x.columns if c not in categorical]
        prepare = ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
                (
                    "cat",
                    make_pipeline(
                        SimpleImputer(strategy="most_frequent"),
                        OneHotEncoder(handle_unknown="ignore"),
                    ),
                    categorical,
                ),
            ]
        )
        linear = (
            Ridge(**params)
            if self.task == "regression"
            else LogisticRegression(max_iter=500, **params)
        )
        return make_pipeline(prepare, linear)

    def fit(
        self,
        x: pd.DataFrame,
        y: np.ndarray,
        x_val: pd.DataFrame,
        y_val: np.ndarray,
        params: dict[str, Any],
        callbacks: list[Any] | None = None,  # boosting callbacks: LightGBM's only
    ) -> Fitted:
        params = {
            k: v for k, v in params.items() if k != "n_estimators" or "hist" in self.algorithm
        }
        if "hist" in self.algorithm and "n_estimators" in params:
            params["max_iter"] = params.pop("n_estimators")
        estimator = self._estimator(x, params)
        estimator.fit(_for_sklearn(x), y)
        return Fitted(estimator)

    def predict(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        x = _for_sklearn(x)
        if self.task == "binary":
            return np.asarray(model.predict_proba(x)[:, 1])
        return np.asarray(model.predict(x))

    def save(self, model: Any, path: Path) -> str:
        target = path.with_suffix(".joblib")
        joblib.dump(model, target)
        return target.name

    def load(self, path: Path) -> Any:
        return joblib.load(path)

    def gain_importance(self, model: Any, features: list[str]) -> dict[str, float] | None:
        return None  # no gain for these: training falls back to permutation importance


def _for_sklearn(x: pd.DataFrame) -> pd.DataFrame:
    # scikit-learn's imputers cannot take pandas' nullable missing values inside categoricals.
    out = x.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = (
                out[col].astype(object).where(out[col].notna(), "__missing__").astype("category")
            )
    return out


def learner_for(
    algorithm: str, task: str, seed: int = 7, early_stopping_rounds: int = 30
) -> Learner:
    """The learner named in a model spec."""
    if algorithm == "lightgbm":
        return LightGBMLearner(task, seed, early_stopping_rounds)
    return SklearnLearner(algorithm, task, seed)
