"""The model types every training step shares: the time-split data, a search trial, the trained model.

A leaf of `maquette.training`: it imports only the learners (themselves a leaf), so the steps,
the version record, the report, serving and monitoring can all import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maquette.model_spec import ModelSpec
from maquette.training.learners import Fitted, Learner, learner_for
from maquette.version_record import VersionRecord

LABEL = "__label"  # the label column of training frames, named so no source column clashes
PARENT = "__parent__"  # the partition value that stands for the parent model
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
        labels: np.ndarray = self.frames[split][LABEL].to_numpy(dtype=float)
        return labels


@dataclass
class Trial:
    """One parameter set of the search, fitted on train and scored on validation."""

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
    def load(cls, folder: Path, record: VersionRecord) -> TrainedModel:
        """The model registered in `folder`, as described by its record."""
        learner = learner_for(record.algorithm, record.task)
        assert record.artifacts is not None, "a registered version has its artifacts"
        files = record.artifacts.models
        return cls(
            record.name,
            record.task,
            record.algorithm,
            record.feature_names,
            record.categories,
            learner,
            learner.load(folder / files[PARENT]),
            record.spec.partition_by,
            {v: learner.load(folder / f) for v, f in files.items() if v != PARENT},
            record.threshold,
            record.label_shift,
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
