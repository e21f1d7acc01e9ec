"""Train and evaluate a declared model: Michelangelo's "train" and "evaluate" steps.

Steps (each a plain function; the Prefect flow in flows/train.py wraps them as tasks):
`prepare` builds the time-split training frame through the feature layer; `search_space`
samples parameter sets; `run_trial` fits one; `fit_partitions` trains a model per partition
value and keeps it only when it beats the parent on its own validation slice; `evaluate`
scores validation and test, overall, per partition and against a naive baseline. `train`
runs them all in order.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from maquette.config import ModelSpec, Settings
from maquette.data import sources as datasets
from maquette.errors import InvalidModelSpec
from maquette.features.layer import FeatureLayer
from maquette.training.learners import Fitted, Learner, learner_for
from maquette.training.metrics import best_f1_threshold, better, binary_metrics, regression_metrics

LABEL = "__label"
PARENT = "__parent__"
SPLITS = ("train", "validation", "test")


@dataclass
class TrainingData:
    """The time-split frames of one model, with what the record needs to know about them."""

    name: str
    spec: ModelSpec
    features: list[str]
    feature_views: dict[str, str]
    categories: dict[str, list[str]]
    frames: dict[str, pd.DataFrame]
    data_refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    label_shift: float = 0.0

    def x(self, split: str) -> pd.DataFrame:
        return self.frames[split][self.features]

    def y(self, split: str) -> np.ndarray:
        return self.frames[split][LABEL].to_numpy(dtype=float)


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    score: float
    best_iteration: int | None
    seconds: float
    fitted: Fitted | None = None


@dataclass
class TrainedModel:
    """A parent model plus the partition models that earned their place, ready to predict."""

    name: str
    task: str
    algorithm: str
    features: list[str]
    categories: dict[str, list[str]]
    learner: Learner
    parent: Any
    partition_by: str | None = None
    partitions: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    label_shift: float = 0.0

    def inputs(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's input columns, categoricals cast to the training categories."""
        x = frame.reindex(columns=self.features)
        for col, levels in self.categories.items():
            x[col] = pd.Categorical(x[col], categories=levels)
        return x

    def matrix(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Rows as LightGBM's float matrix: categoricals as codes of the training categories.

        This is what LightGBM's pandas path computes, without building a DataFrame (which costs
        milliseconds per request); a test keeps the two paths equal.
        """
        codes = self._codes()
        out = np.full((len(records), len(self.features)), np.nan)
        for i, record in enumerate(records):
            for j, name in enumerate(self.features):
                value = record.get(name)
                if value is None:
                    continue
                if name in codes:
                    code = codes[name].get(str(value))
                    if code is not None:
                        out[i, j] = code
                else:
                    out[i, j] = value
        return out

    def _codes(self) -> dict[str, dict[str, int]]:
        if not hasattr(self, "_code_cache"):
            self._code_cache = {
                c: {v: k for k, v in enumerate(levels)} for c, levels in self.categories.items()
            }
        return self._code_cache

    def predict_records(
        self, records: list[dict[str, Any]], partitions: list[str]
    ) -> tuple[np.ndarray, list[str]]:
        """Predictions for feature dicts (online path); `partitions` holds each row's partition value."""
        if self.algorithm != "lightgbm":
            frame = pd.DataFrame(records, columns=self.features)
            if self.partition_by:
                frame[self.partition_by] = partitions
            return self.predict(frame)
        x = self.matrix(records)
        # Each row runs one model: its partition's, else the parent (one LightGBM call per
        # model present, which is most of the cost of a small request).
        used = [p if p in self.partitions else PARENT for p in partitions]
        if not self.partition_by or len(set(used)) == 1:
            model = self.partitions.get(used[0], self.parent) if used else self.parent
            return np.asarray(self.learner.predict(model, x), dtype=float), used
        out = np.empty(len(records), dtype=float)
        for value in set(used):
            rows = [i for i, u in enumerate(used) if u == value]
            out[rows] = self.learner.predict(self.partitions.get(value, self.parent), x[rows])
        return out, used

    def save(self, folder: Path) -> dict[str, str]:
        """Write the parent and partition models; return {"__parent__" or value: file name}."""
        (folder / "models").mkdir(parents=True, exist_ok=True)
        files = {PARENT: "models/" + self.learner.save(self.parent, folder / "models" / "parent")}
        for i, (value, model) in enumerate(sorted(self.partitions.items())):
            files[value] = "models/" + self.learner.save(
                model, folder / "models" / f"partition-{i}"
            )
        return files

    @classmethod
    def load(cls, folder: Path, record: dict[str, Any]) -> TrainedModel:
        """The model registered in `folder`, as described by its record."""
        spec = record["spec"]
        learner = learner_for(record["algorithm"], record["task"])
        files = record["artifacts"]["models"]
        return cls(
            record["name"],
            record["task"],
            record["algorithm"],
            record["feature_names"],
            record["categories"],
            learner,
            learner.load(folder / files[PARENT]),
            spec.get("partition_by"),
            {v: learner.load(folder / f) for v, f in files.items() if v != PARENT},
            record.get("threshold"),
            record.get("label_shift", 0.0),
        )

    def predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """Predictions and, per row, the partition model used (or "__parent__")."""
        x = self.inputs(frame)
        out = np.asarray(self.learner.predict(self.parent, x), dtype=float)
        used = np.full(len(frame), PARENT, dtype=object)
        if self.partition_by and self.partitions:
            keys = frame[self.partition_by].astype(object).to_numpy()
            for value, model in self.partitions.items():
                mask = keys == value
                if mask.any():
                    out[mask] = self.learner.predict(model, x[mask])
                    used[mask] = value
        return out, list(used)


# ------------------------------------------------------------------------------- prepare


def _entities_sql(spec: ModelSpec, path: Path) -> str:
    ts = f'"{spec.timestamp_column}"'
    where = [
        f"{ts} >= '{spec.split.train.start.isoformat()}'::TIMESTAMPTZ",
        f"{ts} < '{spec.split.test.end.isoformat()}'::TIMESTAMPTZ",
        f"{LABEL} IS NOT NULL",
    ]
    if spec.row_filter:
        where.append(f"({spec.row_filter})")
    return (
        f"SELECT * FROM (SELECT *, ({spec.label}) AS {LABEL} FROM read_parquet('{path}')) "
        f"WHERE {' AND '.join(where)}"
    )


def _load_entities(settings: Settings, spec: ModelSpec) -> pd.DataFrame:
    path = datasets.require_loaded(settings, spec.entity_source or settings.dataset.entity_source)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    try:
        table = con.sql(_entities_sql(spec, path)).to_arrow_table()
    except duckdb.Error as exc:
        columns = [
            r[0] for r in con.sql(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
        ]
        raise InvalidModelSpec(
            f"label {spec.label!r} or row_filter cannot be computed: {str(exc).splitlines()[0]}",
            f"Columns of the entity source: {', '.join(columns)}.",
        ) from exc
    return table.to_pandas()


def prepare(settings: Settings, name: str, layer: FeatureLayer | None = None) -> TrainingData:
    """Entity rows with labels -> point-in-time features -> train/validation/test frames."""
    spec = settings.model_spec(name)
    layer = layer or FeatureLayer(settings)
    views = layer._views_for(spec.feature_service)
    features = [f for _, feats in views for f in feats]
    feature_views = {f: view.name for view, feats in views for f in feats}
    entities = _load_entities(settings, spec)
    for column in [spec.partition_by, *spec.baseline_by]:
        if column and column not in entities.columns:
            raise InvalidModelSpec(
                f"column {column!r} (partition_by/baseline_by) is not in the entity source.",
                f"Columns: {', '.join(entities.columns)}.",
            )
    frame = layer.training_frame(entities, spec.feature_service, spec.timestamp_column).to_pandas()
    if spec.task == "binary":
        frame[LABEL] = frame[LABEL].astype(float)
    categories = {}
    for col in features:
        if frame[col].dtype == object:
            frame[col] = frame[col].astype("category")
            categories[col] = [str(c) for c in frame[col].cat.categories]
    ts = frame[spec.timestamp_column]
    frames = {}
    for split in SPLITS:
        window = getattr(spec.split, split)
        frames[split] = frame[(ts >= window.start) & (ts < window.end)].reset_index(drop=True)
    if frames["train"].empty:
        w = spec.split.train
        raise InvalidModelSpec(
            f"the train window {w.start:%Y-%m-%d} .. {w.end:%Y-%m-%d} holds no labelled rows.",
            "Move split.train over dates the entity source covers.",
        )
    data = TrainingData(name, spec, features, feature_views, categories, frames)
    if spec.task == "regression":
        data.label_shift = float(max(0.0, -data.y("train").min()))
    return data


def store_training_sets(settings: Settings, data: TrainingData) -> None:
    """Write each split as Parquet and record its path, content hash, rows and time range."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = settings.state_dir / "training_sets" / data.name / stamp
    folder.mkdir(parents=True, exist_ok=True)
    ts = data.spec.timestamp_column
    for split, frame in data.frames.items():
        path = folder / f"{split}.parquet"
        frame.to_parquet(path, index=False)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        window = getattr(data.spec.split, split)
        data.data_refs[split] = {
            "path": str(path),
            "sha256": digest,
            "rows": len(frame),
            "window": [window.start.isoformat(), window.end.isoformat()],
            "first_event": frame[ts].min().isoformat() if len(frame) else None,
            "last_event": frame[ts].max().isoformat() if len(frame) else None,
        }


# ------------------------------------------------------------------------------- search

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
    return spec.search.metric or ("rmse" if spec.task == "regression" else "auc")


def score(spec: ModelSpec, y: np.ndarray, pred: np.ndarray, shift: float) -> dict[str, Any]:
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
    metric = search_metric(spec)
    best = trials[0]
    for trial in trials[1:]:
        if better(metric, trial.score, best.score):
            best = trial
    return best


# ------------------------------------------------------------------------------- partitions


def fit_partitions(data: TrainingData, best: Trial) -> tuple[TrainedModel, list[dict[str, Any]]]:
    """The parent (best trial) plus partition models that beat it on their validation slice."""
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
    metric = search_metric(spec)
    train, val = data.frames["train"], data.frames["validation"]
    for value in sorted(train[spec.partition_by].dropna().unique()):
        t_mask, v_mask = train[spec.partition_by] == value, val[spec.partition_by] == value
        decision = {
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
            decisions.append(decision)
            continue
        x_val, y_val = data.x("validation")[v_mask], data.y("validation")[v_mask]
        own = learner.fit(
            data.x("train")[t_mask], data.y("train")[t_mask], x_val, y_val, best.params
        )
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
        if kept:
            model.partitions[str(value)] = own.model
        decisions.append(decision)
    return model, decisions


# ------------------------------------------------------------------------------- evaluate


def baseline_predictions(data: TrainingData, split: str) -> np.ndarray:
    """The naive baseline: mean training label per `baseline_by` group (global mean if unseen)."""
    train, frame = data.frames["train"], data.frames[split]
    overall = float(train[LABEL].mean())
    if not data.spec.baseline_by:
        return np.full(len(frame), overall)
    means = train.groupby(data.spec.baseline_by, observed=True)[LABEL].mean().rename("__baseline")
    joined = frame[data.spec.baseline_by].join(means, on=data.spec.baseline_by)
    return joined["__baseline"].fillna(overall).to_numpy(dtype=float)


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


# ------------------------------------------------------------------------------- explain


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


def ensure_trainable(settings: Settings, name: str) -> ModelSpec:
    """The spec, checked before any work: known model, search space that parses."""
    spec = settings.model_spec(name)
    search_space(spec)
    return spec


# ------------------------------------------------------------------------------- all steps


def prepare_and_store(settings: Settings, name: str) -> TrainingData:
    data = prepare(settings, name)
    store_training_sets(settings, data)
    return data


def direct(label: str, fn: Any, *args: Any) -> Any:
    """Run a step as a plain call (the Prefect flow passes a runner that makes it a task)."""
    return fn(*args)


def train(
    settings: Settings,
    name: str,
    trials: int | None = None,
    announce: Any = lambda _: None,
    step: Any = direct,
) -> Any:
    """Prepare, search, partition, evaluate, register: one training run, step by step."""
    from maquette import registry
    from maquette.training.records import build_record
    from maquette.training.report import write_model_report

    started = datetime.now(UTC)
    spec = ensure_trainable(settings, name)
    if trials:
        settings = settings.model_copy(deep=True)
        settings.models[name].search.trials = trials
        spec = settings.models[name]
    announce("building the training frame")
    data = step("prepare", prepare_and_store, settings, name)

    def search() -> list[Trial]:
        results = []
        for number, params in enumerate(search_space(spec)):
            announce(f"trial {number + 1}/{spec.search.trials}")
            results.append(run_trial(data, params, number))
        return results

    # One task for the whole search: on two cores trials cannot run side by side, and each
    # task costs API round trips and server work that compete with the fits for CPU.
    results = step("search", search)
    best = best_trial(spec, results)
    announce("partition models" if spec.partition_by else "final model")
    model, decisions = step("fit-partitions", fit_partitions, data, best)
    announce("evaluating on validation and test")
    evaluation = step("evaluate", evaluate, data, model)

    def register() -> Any:
        version = registry.next_version(settings, name)
        record = build_record(
            name,
            version,
            data,
            model,
            results,
            best,
            decisions,
            evaluation,
            started,
            datetime.now(UTC),
            settings.project_dir,
        )
        return registry.register(
            settings,
            version,
            record,
            model.save,
            lambda folder, rec: write_model_report(folder, rec, data, model),
        )

    announce("writing the record and reports, registering")
    return step("register", register)
