"""Materialization: offline Parquet to the online store, in Feast's Redis layout, in bulk.

For each batch view, the newest row per entity in [start, end] is read with DuckDB, encoded a
whole batch at a time (see `redis_layout`) and written only where it is newer than what Redis
holds, as Feast's own materialization does; the run is then recorded in Feast's registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from feast import FeatureStore, FeatureView, OnDemandFeatureView
from feast.types import FeastType

from maquette.config import Settings
from maquette.data.redis_server import redis_url
from maquette.data.sql import duckdb_connection
from maquette.errors import InvalidEntityFrame
from maquette.features import redis_layout as wire
from maquette.features.point_in_time import ViewSource, latest_rows_sql, scan_sql
from maquette.features.read_plan import view_source

# Called as progress(view name, rows read so far, rows to read).
Progress = Callable[[str, int, int], None]


@dataclass
class MaterializeResult:
    """Rows read per view, rows written (newer than what Redis held), and the wall time."""

    start: datetime
    end: datetime
    rows_read: dict[str, int] = field(default_factory=dict)
    rows_written: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def aware_utc(when: datetime, what: str) -> datetime:
    """`when` in UTC; a naive time is refused, since guessing its zone would shift the window."""
    if when.tzinfo is None:
        raise InvalidEntityFrame(
            f"{what} time {when.isoformat()} has no time zone.",
            "Pass an aware datetime, e.g. datetime(2013, 12, 1, tzinfo=UTC).",
        )
    return when.astimezone(UTC)


def materialize_views(
    settings: Settings,
    store: FeatureStore,
    views: Sequence[FeatureView | OnDemandFeatureView],
    start: datetime,
    end: datetime,
    progress: Progress | None = None,
) -> MaterializeResult:
    """Write the newest row per entity in [start, end] of each view into Redis (Feast layout)."""
    start, end = aware_utc(start, "start"), aware_utc(end, "end")
    result = MaterializeResult(start, end)
    began = time.perf_counter()
    # Two connections: one reads stored timestamps, the other writes, each in its own thread.
    reader, writer = wire.RespWriter(redis_url(settings)), wire.RespWriter(redis_url(settings))
    try:
        for view in views:
            if isinstance(view, OnDemandFeatureView):
                continue
            writes = _ViewWrites.of(view, settings.feast.project)
            read, written = _materialize_view(
                reader, writer, writes, start, end, settings.feast.materialize_batch_rows, progress
            )
            result.rows_read[view.name], result.rows_written[view.name] = read, written
            store.registry.apply_materialization(view, settings.feast.project, start, end)
    finally:
        reader.close()
        writer.close()
    result.seconds = time.perf_counter() - began
    return result


def materialize_views_since_last(
    settings: Settings,
    store: FeatureStore,
    views: Sequence[FeatureView],
    end: datetime,
    progress: Progress | None = None,
) -> MaterializeResult:
    """Each view from where its last materialization ended (or 1970) up to `end`."""
    end = aware_utc(end, "end")
    result = MaterializeResult(end, end)
    for view in views:
        start = view.most_recent_end_time or datetime(1970, 1, 1, tzinfo=UTC)
        part = materialize_views(settings, store, [view], start, end, progress)
        result.start = min(result.start, part.start)
        result.rows_read.update(part.rows_read)
        result.rows_written.update(part.rows_written)
        result.seconds += part.seconds
    return result


@dataclass(frozen=True)
class _ViewWrites:
    """What encoding one view's rows as HSETs needs, worked out once per view."""

    name: str
    source: ViewSource
    project: str
    dtypes: dict[str, FeastType]
    key_types: dict[str, FeastType]
    fields: list[bytes]
    ts_field: bytes

    @classmethod
    def of(cls, view: FeatureView, project: str) -> _ViewWrites:
        source = view_source(view, [f.name for f in view.features])
        return cls(
            view.name,
            source,
            project,
            {f.name: f.dtype for f in view.features},
            {c.name: c.dtype for c in view.entity_columns},
            [wire.field_hash(view.name, f) for f in source.features],
            wire.ts_field(view.name),
        )

    def encoded(
        self, batch: pa.RecordBatch
    ) -> tuple[pa.BinaryArray, pa.Array, np.ndarray, np.ndarray]:
        """(entity keys, one HSET per row, event seconds, event nanos) of a batch."""
        keys = wire.encode_entity_keys(
            {k: batch[k] for k in self.source.join_keys}, self.key_types, self.project
        )
        ts_proto, seconds, nanos = wire.encode_timestamps(batch["__ts"])
        commands = wire.hset_commands(
            keys,
            self.ts_field,
            ts_proto,
            self.fields,
            [wire.encode_values(batch[f], self.dtypes[f]) for f in self.source.features],
        )
        return keys, commands, seconds, nanos


def _materialize_view(
    reader: wire.RespWriter,
    writer: wire.RespWriter,
    writes: _ViewWrites,
    start: datetime,
    end: datetime,
    batch_rows: int,
    progress: Progress | None,
) -> tuple[int, int]:
    """(rows read, rows written) of one view."""
    con = duckdb_connection()
    scan = scan_sql(writes.source, start, end)
    (total,) = con.execute(f"SELECT count(*) FROM ({scan})").fetchall()[0]
    batches = con.sql(latest_rows_sql(writes.source, start, end)).to_arrow_reader(batch_rows)
    read = written = 0

    def write(payload: bytes, rows: int) -> int:
        writer.send(payload)
        writer.replies(rows)
        return rows

    # Keys are unique within a run (newest row per entity), so batch k+1's timestamps can be
    # read while batch k is written: Redis works on one core, encoding on the other.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future[int] | None = None
        for batch in batches:
            # Encode every row's HSET first (while Redis writes the previous batch); the
            # stored timestamps then only decide which rows to keep.
            keys, commands, seconds, nanos = writes.encoded(batch)
            reader.send(wire.hget_commands(keys, writes.ts_field))
            newer = wire.newer_than_stored(reader.replies(batch.num_rows), seconds, nanos)
            read += batch.num_rows
            if progress:
                progress(writes.name, read, total)
            if not newer.all():
                commands = commands.filter(pa.array(newer))
            if pending:
                written += pending.result()
            pending = (
                pool.submit(write, wire.concat(commands), len(commands)) if len(commands) else None
            )
        if pending:
            written += pending.result()
    return read, written
