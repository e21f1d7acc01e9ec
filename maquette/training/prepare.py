"""Prepare: entity rows with their label -> point-in-time training frame -> time splits.

`prepare` reads the entity source with the spec's label and row filter, joins point-in-time
features through the feature layer and cuts the train, validation and test windows;
`store_training_sets` writes each split as Parquet with its content hash, so the version
record can say exactly which rows trained it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.errors import InvalidModelSpec
from maquette.features.layer import FeatureLayer
from maquette.model_spec import ModelSpec
from maquette.training.model_types import LABEL, SPLITS, TrainingData


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
        f"SELECT * FROM (SELECT *, ({spec.label}) AS {LABEL} FROM read_parquet({sql_literal(str(path))})) "
        f"WHERE {' AND '.join(where)}"
    )


def _load_entities(settings: Settings, spec: ModelSpec) -> pd.DataFrame:
    path = datasets.require_loaded(settings, settings.entity_source(spec))
    con = duckdb_connection()
    try:
        table = con.sql(_entities_sql(spec, path)).to_arrow_table()
    except duckdb.Error as exc:
        columns = [
            r[0]
            for r in con.sql(
                f"DESCRIBE SELECT * FROM read_parquet({sql_literal(str(path))})"
            ).fetchall()
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
    views = layer.views_for(spec.feature_service)
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


def prepare_and_store(settings: Settings, name: str) -> TrainingData:
    """The prepared training data, with its splits already written as training sets."""
    data = prepare(settings, name)
    store_training_sets(settings, data)
    return data
