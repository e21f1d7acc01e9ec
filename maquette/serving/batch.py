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

Entities are read, joined, scored and written `serving.batch_chunk_rows` rows at a time, so a
run's memory is bounded by the chunk, not the table: a Parquet file or a query streams, and
each chunk's point-in-time join reads only the feature rows its time span can use.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

import duckdb
import numpy as np
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
    """A batch run: `table` holds the scored rows when no output file was asked for (a run
    written to a file keeps none of them in memory)."""

    table: pa.Table | None
    version: str
    rows: int
    seconds: float
    path: Path | None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")


Entities: TypeAlias = str | Path | pa.Table | pd.DataFrame


def entity_table(settings: Settings, entities: Entities) -> pa.Table:
    """Entities from a frame, a Parquet/CSV file, or a DuckDB query over the offline store."""
    reader = entity_reader(settings, entities, 1 << 20)
    return pa.Table.from_batches(list(reader), reader.schema)


def entity_reader(settings: Settings, entities: Entities, rows: int) -> pa.RecordBatchReader:
    """The entities as a stream of batches of at most `rows` rows (a file or query is read as
    it is consumed, never whole)."""
    if isinstance(entities, pd.DataFrame):
        entities = pa.Table.from_pandas(entities, preserve_index=False)
    if isinstance(entities, pa.Table):
        # One join per chunk: a table of many small chunks is scored in chunks of `rows`.
        whole = entities.combine_chunks()
        return pa.RecordBatchReader.from_batches(whole.schema, whole.to_batches(rows))
    text = str(entities)
    if text.lstrip().lower().startswith(("select", "with")):
        return _query_reader(settings, text, rows)
    path = Path(text)
    if not path.is_file():
        raise InvalidEntityFrame(
            f"entity input {text!r} is neither a file nor a query.",
            "Pass a Parquet/CSV path or a SELECT over the offline store's tables.",
        )
    con = duckdb_connection()
    read = con.read_csv if path.suffix.lower() == ".csv" else con.read_parquet
    return _kept_open(con, read(str(path)).to_arrow_reader(rows))


def _kept_open(
    con: duckdb.DuckDBPyConnection, reader: pa.RecordBatchReader
) -> pa.RecordBatchReader:
    """`reader`, holding its connection open until it is consumed."""

    def batches() -> Iterator[pa.RecordBatch]:
        with con:
            yield from reader

    return pa.RecordBatchReader.from_batches(reader.schema, batches())


def query_entities(settings: Settings, sql: str) -> pa.Table:
    """The rows of one SELECT over the offline store's tables (each Parquet file a view named
    by its stem), on a connection that may read those files only."""
    return _query_reader(settings, sql, 1 << 20).read_all()


def _query_reader(settings: Settings, sql: str, rows: int) -> pa.RecordBatchReader:
    con = duckdb_connection(private=True)  # it locks its configuration below
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
    return _kept_open(con, con.sql(select).to_arrow_reader(rows))


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
    return _range_name(_time_bounds(table, timestamp_column), timestamp_column)


TimeBounds = tuple[datetime, datetime] | None


def _time_bounds(table: pa.Table, timestamp_column: str) -> TimeBounds:
    if timestamp_column not in table.column_names:
        raise InvalidEntityFrame(
            f"the entities have no column {timestamp_column!r} to name the output by.",
            "Give each entity row its event time in that column, or pass an output file.",
        )
    bounds = pc.min_max(table[timestamp_column]).as_py()
    first, last = bounds["min"], bounds["max"]
    if not isinstance(first, datetime) or not isinstance(last, datetime):
        return None
    # A naive time is UTC, as everywhere in Maquette's offline store.
    first, last = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (first, last))
    return first.astimezone(UTC), last.astimezone(UTC)


def _widen(a: TimeBounds, b: TimeBounds) -> TimeBounds:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), max(a[1], b[1])


def _range_name(bounds: TimeBounds, timestamp_column: str) -> str:
    if bounds is None:
        raise InvalidEntityFrame(
            f"no entity row has a time in {timestamp_column!r}, so the output has no time range.",
            "Pass entities with event times, or an output file.",
        )
    first, last = bounds
    return f"{first:%Y-%m-%d}_{last:%Y-%m-%d}.parquet"


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


@dataclass
class _Scoring:
    """What scores one chunk: the model, its features as of each row's time, the stamps."""

    model: TrainedModel
    layer: FeatureLayer
    feature_service: str
    timestamp_column: str
    version: str

    def score(self, entities: pa.Table) -> pa.Table:
        """The entities with their features, prediction, decision, partition and version."""
        frame = self.layer.training_frame(entities, self.feature_service, self.timestamp_column)
        scored, used = self.model.predict_table(frame)
        out = frame.append_column("prediction", pa.array(scored, pa.float64()))
        if self.model.task == "binary" and self.model.threshold is not None:
            out = out.append_column("decision", pa.array(scored >= self.model.threshold))
        out = out.append_column("partition", pa.array(used, pa.string()))
        stamp = np.full(out.num_rows, self.version, dtype=object)
        return out.append_column("model_version", pa.array(stamp, pa.string()))


def predict_batch(
    settings: Settings,
    entities: Entities | None,
    selector: str,
    output: Path | None = None,
    timestamp_column: str | None = None,
    output_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> BatchResult:
    """Score every entity row with `selector` (NAME means NAME@<default alias>).

    `entities` None: every row of the model's entity source. `timestamp_column` None: the
    model's declared one (default event_timestamp). `output_dir` (instead of `output`): write
    `<output_dir>/<first>_<last>.parquet`, named by the entities' time range. Without either,
    the scored rows come back in `BatchResult.table`. `progress` is called with the number of
    rows scored so far after each chunk.
    """
    began = time.perf_counter()
    if ":" not in selector and "@" not in selector:
        selector = f"{selector}@{settings.serving.default_alias}"
    version = registry.resolve(settings, selector)
    spec = settings.models.get(version.name)
    timestamp_column = timestamp_column or (spec.timestamp_column if spec else "event_timestamp")
    scoring = _Scoring(
        TrainedModel.load(version.path, version.record),
        FeatureLayer(settings),
        version.record.feature_service,
        timestamp_column,
        version.tag,
    )
    source = model_entities(settings, version.name) if entities is None else entities
    reader = entity_reader(settings, source, settings.serving.batch_chunk_rows)
    if output is None and output_dir is None:
        chunks, rows = [], 0
        for batch in reader:
            if batch.num_rows:
                chunks.append(scoring.score(pa.Table.from_batches([batch])))
                rows += batch.num_rows
                if progress:
                    progress(rows)
        table = pa.concat_tables(chunks) if chunks else scoring.score(reader.schema.empty_table())
        return BatchResult(table, version.tag, rows, time.perf_counter() - began, None)
    folder = output.parent if output else output_dir
    if folder is None:
        raise ValueError("predict_batch: pass output or output_dir, not neither")
    folder.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    # Written under a name of its own, renamed when whole: a reader of the output never sees
    # half of a run, and a failed run leaves nothing behind.
    partial = folder / f".scoring-{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
    try:
        rows, bounds = _write_scores(scoring, reader, partial, progress, output is not None)
        if output is None:
            if rows == 0:  # a scheduled run with nothing to score: no file, no dates
                partial.unlink(missing_ok=True)
                return BatchResult(None, version.tag, 0, time.perf_counter() - began, None)
            output = folder / _range_name(bounds, timestamp_column)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return BatchResult(None, version.tag, rows, time.perf_counter() - began, output)


def _remove_abandoned(folder: Path) -> None:
    """Partial outputs of runs whose process is gone (killed before it could clean up)."""
    for partial in folder.glob(".scoring-*-*.partial"):
        pid = partial.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            partial.unlink(missing_ok=True)


def _write_scores(
    scoring: _Scoring,
    reader: pa.RecordBatchReader,
    path: Path,
    progress: Callable[[int], None] | None,
    empty_file: bool,
) -> tuple[int, TimeBounds]:
    """Score the reader's chunks into one Parquet file: (rows, entity time bounds). With no
    rows, `empty_file` writes the columns a run would have (a named output file exists)."""
    writer: pq.ParquetWriter | None = None
    rows, bounds = 0, None
    try:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            scored = scoring.score(pa.Table.from_batches([batch]))
            bounds = _widen(bounds, _time_bounds(scored, scoring.timestamp_column))
            if writer is None:
                writer = pq.ParquetWriter(path, scored.schema)
            writer.write_table(scored)
            rows += scored.num_rows
            if progress:
                progress(rows)
        if writer is None and empty_file:
            writer = pq.ParquetWriter(path, scoring.score(reader.schema.empty_table()).schema)
    finally:
        if writer is not None:
            writer.close()
    return rows, bounds
