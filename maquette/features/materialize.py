"""Materialization: offline Parquet to the online store, in Feast's Redis layout, in bulk.

For each batch view, the newest row per entity in [start, end] is read with DuckDB, encoded a
whole batch at a time (see `redis_layout`) and written only where it is newer than what Redis
holds, as Feast's own materialization does; the run is then recorded in Feast's registry.

An incremental run starts each view where its last run ended, and a view never materialized
at its oldest row: a static table stamped years ago is covered, not skipped. A view that ends
up with nothing written gets a note saying why (see `why_nothing_written`).
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
from maquette.features.point_in_time import ViewSource, latest_rows_sql, scan_sql, table_span
from maquette.features.read_plan import join_key_types, view_source

# Called as progress(view name, rows read so far, rows to read).
Progress = Callable[[str, int, int], None]


@dataclass
class MaterializeResult:
    """Rows read per view, rows written (newer than what Redis held), the wall time, and per
    view with nothing written or only expired rows, a note saying why."""

    start: datetime
    end: datetime
    rows_read: dict[str, int] = field(default_factory=dict)
    rows_written: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)


def aware_utc(when: datetime, what: str) -> datetime:
    """`when` in UTC; a naive time is refused, since guessing its zone would shift the window."""
    if when.tzinfo is None:
        raise InvalidEntityFrame(
            f"{what} time {when.isoformat()} has no time zone.",
            "Pass an aware datetime, e.g. datetime(2024, 6, 1, tzinfo=UTC).",
        )
    return when.astimezone(UTC)


def materialize_views(
    settings: Settings,
    store: FeatureStore,
    views: Sequence[FeatureView | OnDemandFeatureView],
    start: datetime,
    end: datetime,
    progress: Progress | None = None,
    explain: bool = False,
) -> MaterializeResult:
    """Write the newest row per entity in [start, end] of each view into Redis (Feast layout).

    `explain`: note why a view got nothing (or only rows past its TTL). It scans each view's
    table, so only a person asking pays for it, never the hourly flow or a replay's slots."""
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
            note = why_nothing_written(writes.source, start, end, written) if explain else None
            if note:
                result.notes[view.name] = note
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
    explain: bool = False,
) -> MaterializeResult:
    """Each view from where its last materialization ended (never materialized: from its
    oldest row, so no history is skipped) up to `end`; `explain` as in `materialize_views`."""
    end = aware_utc(end, "end")
    result = MaterializeResult(end, end)
    for view in views:
        start = view.most_recent_end_time or _oldest_row(view) or end
        part = materialize_views(settings, store, [view], min(start, end), end, progress, explain)
        result.start = min(result.start, part.start)
        result.rows_read.update(part.rows_read)
        result.rows_written.update(part.rows_written)
        result.notes.update(part.notes)
        result.seconds += part.seconds
    return result


def _oldest_row(view: FeatureView) -> datetime | None:
    rows, first, _, _, _ = table_span(view_source(view, []), None, None)
    return first if rows else None


def last_run_notes(views: Sequence[FeatureView], rows_written: dict[str, int]) -> dict[str, str]:
    """`why_nothing_written` of each view's last run (as the registry recorded its range), for
    a run whose result holds only rows written (the `materialize` flow's)."""
    notes = {}
    for view in views:
        if view.name in rows_written and view.materialization_intervals:
            start, end = view.materialization_intervals[-1]
            source = view_source(view, [])
            note = why_nothing_written(source, start, end, rows_written[view.name])
            if note:
                notes[view.name] = note
    return notes


def why_nothing_written(
    source: ViewSource, start: datetime, end: datetime, written: int
) -> str | None:
    """Why a view's run wrote nothing (or wrote only rows already past the view's TTL at
    `end`, which online reads flag OUTSIDE_MAX_AGE); None when there is nothing to say."""
    if written and source.ttl is None:
        return None  # rows were written and never expire: no need to scan the table
    rows, first, last, in_range, newest = table_span(source, start, end)
    if rows == 0:
        return f"its table {source.path} is empty: run `maquette data load`, check its SQL."
    assert first is not None and last is not None  # the table has rows
    if in_range == 0:
        where = "older than" if last < start else "newer than" if first > end else "outside"
        return (
            f"no rows between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC: its "
            f"{rows:,} rows ({first:%Y-%m-%d} .. {last:%Y-%m-%d}) are all {where} that range"
            + (" (an earlier run covered them, or --start skipped them)." if last < start else ".")
        )
    expired = source.ttl is not None and newest is not None and newest + source.ttl < end
    if written == 0:
        note = "Redis already holds these rows or newer ones (a newer value is never replaced)."
        return note + (" They are all older than its TTL." if expired else "")
    if expired:
        return (
            f"every row written is older than its TTL ({source.ttl}) at {end:%Y-%m-%d %H:%M} "
            "UTC: online reads flag them OUTSIDE_MAX_AGE until newer rows arrive."
        )
    return None


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
            join_key_types(view),
            [wire.field_hash(view.name, f) for f in source.features],
            wire.ts_field(view.name),
        )

    def encoded(
        self, batch: pa.RecordBatch
    ) -> tuple[pa.BinaryArray, pa.Array, np.ndarray, np.ndarray]:
        """(entity keys, one HSET per row, event seconds, event nanos) of a batch."""
        keys = wire.encode_entity_keys(
            {k: batch[k] for k in self.source.join_keys},
            self.key_types,
            self.project,
            batch.num_rows,
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
