"""Batch predictions: an entity frame -> point-in-time features -> a version -> Parquet.

Entities come as a Parquet/CSV path, a DuckDB query over the offline store's tables, a frame,
or (none given) every row of the model's entity source. Features come from the offline store as
of each row's event time (the same join as training), so a batch run is a faithful replay; every
output row carries the exact version. Written into a folder, the output is named by the data's
time range, `<first>_<last>.parquet` (UTC dates of the earliest and latest entity time), so
scoring the same entities again replaces the same file whatever the day it runs.

A query is one SELECT (or WITH ... SELECT) statement, run on a connection that can read the
offline store's Parquet files and nothing else: external access is off after they are
registered, so a query can neither write a file nor read one outside the store.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maquette import registry
from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.sql import duckdb_connection, sql_literal
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
    text = str(entities)
    if text.lstrip().lower().startswith(("select", "with")):
        return query_entities(settings, text)
    path = Path(text)
    if not path.is_file():
        raise InvalidEntityFrame(
            f"entity input {text!r} is neither a file nor a query.",
            "Pass a Parquet/CSV path or a SELECT over the offline store's tables.",
        )
    con = duckdb_connection()
    read = con.read_csv if path.suffix.lower() == ".csv" else con.read_parquet
    return read(str(path)).to_arrow_table()


def query_entities(settings: Settings, sql: str) -> pa.Table:
    """The rows of one SELECT over the offline store's tables (each Parquet file a view named
    by its stem), on a connection that may read those files only."""
    con = duckdb_connection()
    select = single_select(con, sql)
    tables = {p.stem: p for p in datasets.sources_dir(settings).glob("*.parquet")}
    tables |= {p.stem: p for p in settings.offline_store.glob("*.parquet")}
    for name, path in tables.items():
        con.read_parquet(str(path)).create_view(name)
    # The views read these files when the query runs; nothing else is reachable from here on
    # (no COPY, ATTACH, INSTALL or read_csv('/any/file')), and the settings are locked.
    paths = "[" + ", ".join(sql_literal(p) for p in tables.values()) + "]"
    con.execute(f"SET allowed_paths = {paths}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con.sql(select).to_arrow_table()


def single_select(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """`sql` when it is exactly one SELECT statement, else InvalidEntityFrame saying why."""
    fix = "Pass one SELECT (or WITH ... SELECT) over the offline store's tables, nothing else."
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise InvalidEntityFrame(f"the entity query does not parse: {exc}", fix) from exc
    if len(statements) != 1:
        raise InvalidEntityFrame(
            f"the entity query holds {len(statements)} statements; only one SELECT runs.", fix
        )
    if statements[0].type != duckdb.StatementType.SELECT:
        kind = statements[0].type.name
        raise InvalidEntityFrame(f"the entity query is a {kind} statement, not a SELECT.", fix)
    return str(statements[0].query)


def model_entities(settings: Settings, model: str) -> Path:
    """The loaded entity source of a declared model: what a batch run scores when given none."""
    return datasets.require_loaded(settings, settings.entity_source(settings.model_spec(model)))


def time_range_name(table: pa.Table, timestamp_column: str) -> str:
    """`<first>_<last>.parquet`: UTC dates of the earliest and latest time in the column."""
    if timestamp_column not in table.column_names:
        raise InvalidEntityFrame(
            f"the entities have no column {timestamp_column!r} to name the output by.",
            "Give each entity row its event time in that column, or pass an output file.",
        )
    bounds = pc.min_max(table[timestamp_column]).as_py()
    first, last = bounds["min"], bounds["max"]
    if not isinstance(first, datetime) or not isinstance(last, datetime):
        raise InvalidEntityFrame(
            f"no entity row has a time in {timestamp_column!r}, so the output has no time range.",
            "Pass entities with event times, or an output file.",
        )
    # A naive time is UTC, as everywhere in Maquette's offline store.
    first, last = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (first, last))
    return f"{first.astimezone(UTC):%Y-%m-%d}_{last.astimezone(UTC):%Y-%m-%d}.parquet"


def scheduled_batch(settings: Settings, selector: str) -> BatchResult:
    """What the batch_predict deployment runs: `orchestration.batch_entities` (None: the model's
    entity source) scored by `selector` (a declared model's NAME, NAME@ALIAS or NAME:VERSION)
    into `<orchestration.batch_output>/<NAME>/<first>_<last>.parquet`."""
    name = re.split("[@:]", selector, maxsplit=1)[0]
    settings.model_spec(name)  # a declared model only: ConfigError listing them otherwise
    folder = settings.path(settings.orchestration.batch_output) / name
    return predict_batch(
        settings, settings.orchestration.batch_entities, selector, output_dir=folder
    )


def predict_batch(
    settings: Settings,
    entities: str | Path | pa.Table | pd.DataFrame | None,
    selector: str,
    output: Path | None = None,
    timestamp_column: str | None = None,
    output_dir: Path | None = None,
) -> BatchResult:
    """Score every entity row with `selector` (NAME means NAME@<default alias>).

    `entities` None: every row of the model's entity source. `timestamp_column` None: the
    model's declared one (default event_timestamp). `output_dir` (instead of `output`): write
    `<output_dir>/<first>_<last>.parquet`, named by the entities' time range.
    """
    began = time.perf_counter()
    if ":" not in selector and "@" not in selector:
        selector = f"{selector}@{settings.serving.default_alias}"
    version = registry.resolve(settings, selector)
    spec = settings.models.get(version.name)
    timestamp_column = timestamp_column or (spec.timestamp_column if spec else "event_timestamp")
    model = TrainedModel.load(version.path, version.record)
    table = entity_table(
        settings, model_entities(settings, version.name) if entities is None else entities
    )
    if output_dir is not None:
        if table.num_rows == 0:  # a scheduled run with nothing to score: no file, no dates
            return BatchResult(table, version.tag, 0, time.perf_counter() - began, None)
        output = output_dir / time_range_name(table, timestamp_column)
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
        partial = output.with_suffix(".partial")
        pq.write_table(out, partial)
        partial.replace(output)  # a reader of the file never sees half of a run
    return BatchResult(out, version.tag, out.num_rows, time.perf_counter() - began, output)
