"""Batch predictions: an entity frame -> point-in-time features -> a version -> Parquet.

Entities come as a Parquet/CSV path, a DuckDB query over the offline store's tables, or a
frame. Features come from the offline store as of each row's event time (the same join as
training), so a batch run is a faithful replay; every output row carries the exact version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maquette import registry
from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.sql import duckdb_connection
from maquette.errors import InvalidEntityFrame
from maquette.features.layer import FeatureLayer
from maquette.training.model_types import TrainedModel


@dataclass
class BatchResult:
    table: pa.Table
    version: str
    rows: int
    seconds: float
    path: Path | None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")


def entity_table(settings: Settings, entities: str | Path | pa.Table | pd.DataFrame) -> pa.Table:
    """Entities from a frame, a Parquet/CSV file, or a DuckDB query over the offline store."""
    if isinstance(entities, pa.Table):
        return entities
    if isinstance(entities, pd.DataFrame):
        return pa.Table.from_pandas(entities, preserve_index=False)
    con = duckdb_connection()
    text = str(entities)
    if text.lstrip().lower().startswith(("select", "with")):
        for path in datasets.sources_dir(settings).glob("*.parquet"):
            con.execute(f"CREATE VIEW \"{path.stem}\" AS SELECT * FROM read_parquet('{path}')")
        for path in settings.offline_store.glob("*.parquet"):
            con.execute(f"CREATE VIEW \"{path.stem}\" AS SELECT * FROM read_parquet('{path}')")
        return con.sql(text).to_arrow_table()
    path = Path(text)
    if not path.is_file():
        raise InvalidEntityFrame(
            f"entity input {text!r} is neither a file nor a query.",
            "Pass a Parquet/CSV path or a SELECT over the offline store's tables.",
        )
    reader = "read_csv_auto" if path.suffix.lower() == ".csv" else "read_parquet"
    return con.sql(f"SELECT * FROM {reader}('{path}')").to_arrow_table()


def predict_batch(
    settings: Settings,
    entities: str | Path | pa.Table | pd.DataFrame,
    selector: str,
    output: Path | None = None,
    timestamp_column: str = "event_timestamp",
) -> BatchResult:
    """Score every entity row with `selector` (NAME means NAME@<default alias>)."""
    began = time.perf_counter()
    if ":" not in selector and "@" not in selector:
        selector = f"{selector}@{settings.serving.default_alias}"
    version = registry.resolve(settings, selector)
    model = TrainedModel.load(version.path, version.record)
    table = entity_table(settings, entities)
    frame = FeatureLayer(settings).training_frame(
        table, version.record.feature_service, timestamp_column
    )
    scored, used = model.predict(frame.to_pandas())
    out = frame.append_column("prediction", pa.array(scored, pa.float64()))
    if model.task == "binary" and model.threshold is not None:
        out = out.append_column("decision", pa.array(scored >= model.threshold))
    out = out.append_column("partition", pa.array(used, pa.string()))
    out = out.append_column("model_version", pa.array([version.tag] * out.num_rows, pa.string()))
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(out, output)
    return BatchResult(out, version.tag, out.num_rows, time.perf_counter() - began, output)
