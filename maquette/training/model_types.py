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
import pyarrow as pa
import pyarrow.compute as pc

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
    pruned: bool = False  # stopped early by the tuned search: never the best, no model kept


def partition_keys(values: list[Any]) -> np.ndarray:
    """Partition values as the partition models are named: `str(value)`, as training names
    them and the service looks them up (a float 1.0 is "1.0", True is "True"); None stays."""
    keys = [
        None
        if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v)
        else str(v)
        for v in values
    ]
    return np.array(keys, dtype=object)


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

    def _codes(self) -> dict[str, dict[str, int]]:
        if not hasattr(self, "_code_cache"):
            self._code_cache = {
                c: {v: k for k, v in enumerate(levels)} for c, levels in self.categories.items()
            }
        return self._code_cache

    def predict_matrix(self, x: np.ndarray, partitions: list[str]) -> tuple[np.ndarray, list[str]]:
        """Predictions for rows of `matrix_of`: each row runs its partition's model, else the
        parent's (one LightGBM call per model present, most of a small request's cost)."""
        used = [p if p in self.partitions else PARENT for p in partitions]
        kinds = set(used)
        inputs = x if self.algorithm == "lightgbm" else self._frame_of(x)
        if not self.partition_by or len(kinds) <= 1:
            model = self.partitions.get(used[0], self.parent) if used else self.parent
            return np.asarray(self.learner.predict(model, inputs), dtype=float), used
        return self._predict_by_partition(inputs, np.asarray(used, dtype=object)), used

    def _frame_of(self, x: np.ndarray) -> pd.DataFrame:
        """`matrix_of`'s rows as the frame scikit-learn's pipelines were fitted on: categorical
        codes back to the training categories (NaN: missing)."""
        data: dict[str, Any] = {}
        for j, name in enumerate(self.features):
            levels = self.categories.get(name)
            if levels is None:
                data[name] = x[:, j]
            else:
                codes = np.where(np.isnan(x[:, j]), -1, x[:, j]).astype(int)
                data[name] = pd.Categorical.from_codes(codes, categories=levels)
        return pd.DataFrame(data)

    def matrix_of(self, columns: dict[str, list[Any]], rows: int) -> np.ndarray:
        """Feature columns as LightGBM's float matrix (rows x features): categoricals as codes
        of the training categories, None (missing) as NaN.

        This is what LightGBM's pandas path computes, without building a DataFrame (which costs
        milliseconds per request); tests/e2e/test_three_ways.py holds served predictions equal to
        batch ones, which go through the pandas path.
        """
        codes = self._codes()
        out = np.empty((rows, len(self.features)))
        for j, name in enumerate(self.features):
            column = columns.get(name)
            if column is None:
                out[:, j] = np.nan
            elif name in codes:
                levels = codes[name]
                out[:, j] = [
                    None if v is None else levels.get(v if v.__class__ is str else str(v))
                    for v in column
                ]
            else:
                # numpy turns None into NaN for a float array.
                out[:, j] = np.asarray(column, dtype=float)
        return out

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
        keys = None
        if self.partition_by and self.partitions:
            keys = partition_keys(frame[self.partition_by].tolist())
        used = self._models_for(len(frame), keys)
        return self._predict_by_partition(self.inputs(frame), used), list(used)

    def predict_table(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """`predict` for an Arrow table (a batch run's chunk), without going through pandas:
        predictions and the partition model used per row (an object array)."""
        keys = None
        if self.partition_by and self.partitions and self.partition_by in table.column_names:
            column = table[self.partition_by]
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                keys = column.to_numpy(zero_copy_only=False)
            else:
                keys = partition_keys(column.to_pylist())
        used = self._models_for(table.num_rows, keys)
        x = self.arrow_matrix(table)
        inputs = x if self.algorithm == "lightgbm" else self._frame_of(x)
        return self._predict_by_partition(inputs, used), used

    def _models_for(self, rows: int, keys: np.ndarray | None) -> np.ndarray:
        """Per row, the partition model its key names, else "__parent__" (an object array)."""
        used = np.full(rows, PARENT, dtype=object)
        if keys is not None:
            for value in self.partitions:
                used[keys == value] = value
        return used

    def _predict_by_partition(self, x: Any, used: np.ndarray) -> np.ndarray:
        """Each row scored by the model `used` names, one call per model (rows are scored
        independently, so no row is scored twice)."""
        out = np.empty(len(used), dtype=float)
        for value in dict.fromkeys(used.tolist()):
            rows = used == value
            model = self.parent if value == PARENT else self.partitions[value]
            subset = x if rows.all() else x[rows]
            out[rows] = self.learner.predict(model, subset)
        return out

    def arrow_matrix(self, table: pa.Table) -> np.ndarray:
        """`matrix_of` for an Arrow table, column by column in Arrow: categoricals as codes of
        the training categories (other values and nulls: NaN), numbers as floats (nulls: NaN).
        tests/test_batch.py holds its predictions equal to the pandas path's."""
        out = np.empty((table.num_rows, len(self.features)))
        for j, name in enumerate(self.features):
            if name not in table.column_names:
                out[:, j] = np.nan
                continue
            column = table[name]
            levels = self.categories.get(name)
            if levels is not None:
                if not pa.types.is_string(column.type):
                    column = column.cast(pa.string())
                column = pc.index_in(column, value_set=pa.array(levels, pa.string()))
            out[:, j] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return out
