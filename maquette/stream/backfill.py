"""The batch layer: the stream's aggregates over historical events, written to the offline store.

`load_dataset` is the public loader: the dataset's tables (`maquette.data.sources.load_tables`),
then this backfill when the stream's events are among them, so `maquette data load` leaves the
streamed views' history in place too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import duckdb

from maquette.config import Settings
from maquette.data.sources import TableSummary, feature_table_path, load_tables
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.errors import ConfigError
from maquette.stream.aggregations import stream_definition
from maquette.stream.history import events_sql


def load_dataset(
    settings: Settings, progress: Callable[[str], None] | None = None
) -> list[TableSummary]:
    """Write the dataset's tables, then the stream's backfill when its events are loaded."""
    summaries = load_tables(settings, progress)
    if settings.stream.events_source in {s.name for s in summaries if s.kind == "source"}:
        if progress:
            progress("stream backfill")
        summaries += backfill(settings)
    return summaries


def backfill(settings: Settings) -> list[TableSummary]:
    """Write each aggregation's offline table from the historical events (the batch layer).

    Events before `stream.backfill_before` are aggregated (all of them when unset); rows the
    stream already wrote after that instant are kept.
    """
    definition = stream_definition(settings)
    before = settings.stream.backfill_before
    events = events_sql(settings, end=before)
    con = duckdb_connection(quiet=True)
    out = []
    for agg in definition.aggregations:
        path = feature_table_path(settings, agg.view)
        sql = agg.backfill_sql(events, definition.event_time)
        if before is not None and path.is_file():
            cutover = f"{sql_literal(before.isoformat())}::TIMESTAMPTZ"
            sql = (
                f"SELECT * FROM ({sql}) UNION ALL SELECT * FROM read_parquet({sql_literal(path)}) "
                f"WHERE event_timestamp > {cutover}"
            )
        try:
            write_parquet_durably(con, f"SELECT * FROM ({sql}) ORDER BY 1, 2", path)
        except duckdb.Error as exc:
            raise ConfigError(
                f"the stream backfill over {settings.stream.events_source!r} failed: {exc}",
                f"That table needs the event fields {list(definition.fields)}; "
                "or set stream.events_source: null.",
            ) from exc
        ((rows, first, last),) = con.execute(
            "SELECT count(*), min(event_timestamp), max(event_timestamp) FROM read_parquet(?)",
            [str(path)],
        ).fetchall()
        out.append(TableSummary(agg.view, "feature", path, rows, first, last))
    return out


def write_parquet_durably(con: duckdb.DuckDBPyConnection, sql: str, path: Path) -> None:
    """COPY a query to Parquet beside `path`, fsync, rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    con.execute(f"COPY ({sql}) TO {sql_literal(tmp)} (FORMAT parquet, COMPRESSION zstd)")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
