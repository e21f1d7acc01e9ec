"""Materialization: offline Parquet to the online store, in Feast's Redis layout, in bulk.

For each batch view, the newest row per entity in [start, end] is read with DuckDB (or Feast's
Spark store, on `feast.offline_engine: spark`: see `spark_engine`), encoded a whole batch at a
time (see `redis_layout`) and written only where it is newer than what Redis holds, as Feast's
own materialization does; the run is then recorded in Feast's registry.

An incremental run starts each view where its last run ended, and a view never materialized
at its oldest row: a static table stamped years ago is covered, not skipped. A view that ends
up with nothing written gets a note saying why (see `why_nothing_written`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from feast import FeatureStore, FeatureView, OnDemandFeatureView
from feast.types import FeastType
from redis.crc import key_slot

from maquette.config import Settings
from maquette.data.sql import duckdb_connection
from maquette.errors import InvalidEntityFrame
from maquette.features import redis_layout as wire
from maquette.features.point_in_time import (
    ViewSource,
    _between,
    _lit,
    _q,
    latest_rows_sql,
    scan_sql,
    table_span,
)
from maquette.features.read_plan import join_key_types, view_source
from maquette.features.redis_cluster import RoutedPipe, raw_pipe
from maquette.features.spark_engine import spark_latest_rows, spark_rows_between, uses_spark

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
    reader, writer = raw_pipe(settings), raw_pipe(settings)
    try:
        for view in views:
            if isinstance(view, OnDemandFeatureView):
                continue
            writes = _ViewWrites.of(view, settings.feast.project)
            read, written = _materialize_view(
                settings, reader, writer, writes, start, end, progress
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
        start = _last_end(view) or end
        part = materialize_views(settings, store, [view], min(start, end), end, progress, explain)
        result.start = min(result.start, part.start)
        result.rows_read.update(part.rows_read)
        result.rows_written.update(part.rows_written)
        result.notes.update(part.notes)
        result.seconds += part.seconds
    return result


def _last_end(view: FeatureView) -> datetime | None:
    """Where an incremental run of `view` starts: its last run's end, else its oldest row."""
    return view.most_recent_end_time or _oldest_row(view)


def _oldest_row(view: FeatureView) -> datetime | None:
    rows, first, _, _, _ = table_span(view_source(view, []), None, None)
    return first if rows else None


class MaterializationAlongClock:
    """Incremental materialization along a moving clock (a replay), recorded in Feast's
    registry once: `advance(t)` writes each view's rows from where it stood up to t, as
    `materialize_views_since_last` would, and `record()` (on leaving the `with` block) adds one
    interval per view, from where it stood first to the last t, to the registry.

    A replay steps the clock hourly; writing the whole registry file after every view's step
    cost more than the rows themselves (~0.2 s a slot, 744 slots a month). The connections and
    each view's encoding plan are also made once rather than per step. Between `advance` and
    `record` the registry lags Redis; a failed replay still records how far it got.
    """

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore,
        views: Sequence[FeatureView],
        until: datetime | None = None,
    ):
        self.settings, self.store = settings, store
        # Where the clock will stop: after its first step, each view's rows up to there are
        # read once, and each step picks its newest rows per entity from them in memory
        # (a Parquet scan per view and step cost ~10 ms, 744 slots a month).
        self.until = aware_utc(until, "until") if until else None
        self._ahead: dict[str, _RowsAhead] = {}
        self.views = [v for v in views if not isinstance(v, OnDemandFeatureView)]
        project = settings.feast.project
        self._writes = {v.name: _ViewWrites.of(v, project) for v in self.views}
        # Where each view stands: its first run starts there, as an incremental run would.
        self._first = {v.name: _last_end(v) for v in self.views}
        self._reached: dict[str, datetime] = {}
        self._reader = raw_pipe(settings)
        self._writer = raw_pipe(settings)

    def __enter__(self) -> MaterializationAlongClock:
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.record()
        finally:
            self._reader.close()
            self._writer.close()

    def advance(self, end: datetime) -> MaterializeResult:
        """Write every view's newest rows from where it stands up to `end` (only rows newer
        than Redis holds, as always); the registry is left as it is until `record`."""
        end = aware_utc(end, "end")
        result = MaterializeResult(end, end)
        began = time.perf_counter()
        for view in self.views:
            start = self._reached.get(view.name) or self._first[view.name] or end
            if view.name in self._reached and start >= end:
                continue  # [start, end] was written by the last step: nothing newer can come
            start = min(start, end)
            result.start = min(result.start, start)
            read, written = self._step(view.name, start, end)
            result.rows_read[view.name], result.rows_written[view.name] = read, written
            # The recorded interval covers every step's window (a clock behind the view's last
            # run included: its interval then starts at the clock, and its end stays the latest).
            first = self._first[view.name]
            self._first[view.name] = min(first, start) if first else start
            self._reached[view.name] = end
        result.seconds = time.perf_counter() - began
        return result

    def _step(self, name: str, start: datetime, end: datetime) -> tuple[int, int]:
        """(rows read, rows written) of one view's step: from its rows read ahead when they
        cover [start, end], else from its table (and then its rows up to `until` are read)."""
        writes, ahead = self._writes[name], self._ahead.get(name)
        if ahead is not None and ahead.covers(start, end):
            rows = ahead.newest(start, end, writes.source.join_keys)
            batches = [b for b in rows.to_batches() if b.num_rows]
            return _write_newer(self._reader, self._writer, writes, batches, 0, None)
        found = _materialize_view(
            self.settings, self._reader, self._writer, writes, start, end, None
        )
        if self.until is not None and end < self.until and ahead is None:
            self._ahead[name] = _RowsAhead.read(self.settings, writes.source, end, self.until)
        return found

    def record(self) -> None:
        """One materialization interval per view that moved, in Feast's registry (one write)."""
        moved = [v for v in self.views if v.name in self._reached]
        registry, project = self.store.registry, self.settings.feast.project
        for view in moved:
            first = self._first[view.name]
            assert first is not None  # set by the view's first `advance`
            # The registry file is written once, with the last view's interval.
            registry.apply_materialization(
                view, project, first, self._reached[view.name], commit=view is moved[-1]
            )
            self._first[view.name] = self._reached.pop(view.name)  # a later step starts here


@dataclass(frozen=True)
class _RowsAhead:
    """A view's rows with lo <= event time <= hi (keys, features, __ts), read once, in event
    time order (ties: by created time, nulls first), for the steps of a moving clock."""

    lo: datetime
    hi: datetime
    rows: pa.Table
    micros: np.ndarray  # each row's event time, microseconds since the epoch

    @classmethod
    def read(cls, settings: Settings, source: ViewSource, lo: datetime, hi: datetime) -> _RowsAhead:
        if uses_spark(settings):
            return cls._of(lo, hi, spark_rows_between(settings, source, lo, hi))
        ts = _q(source.timestamp_field)
        cols = ", ".join(_q(c) for c in (*source.join_keys, *source.features))
        created = source.created_timestamp_field
        # Sorted so that the last row of an entity is the one Feast's pull-latest keeps (newest
        # event time, then newest created time, a null created time losing).
        order = "__ts" + (f", {_q(created)} NULLS FIRST" if created else "")
        query = (
            f"SELECT {cols}, {ts}::TIMESTAMPTZ AS __ts FROM read_parquet({_lit(source.path)}) "
            f"WHERE {_between(source, lo, hi)} ORDER BY {order}"
        )
        return cls._of(lo, hi, duckdb_connection().sql(query).to_arrow_table())

    @classmethod
    def _of(cls, lo: datetime, hi: datetime, rows: pa.Table) -> _RowsAhead:
        micros = rows["__ts"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
        return cls(lo, hi, rows, micros)

    def covers(self, start: datetime, end: datetime) -> bool:
        return self.lo <= start and end <= self.hi

    def newest(self, start: datetime, end: datetime, keys: Sequence[str]) -> pa.Table:
        """The newest row per entity with start <= event time <= end (`latest_rows_sql`'s)."""
        first = int(np.searchsorted(self.micros, _micros(start), side="left"))
        last = int(np.searchsorted(self.micros, _micros(end), side="right"))
        rows = self.rows.slice(first, last - first)
        if not keys or not rows.num_rows:  # a view without entities keeps its newest row
            return rows.slice(rows.num_rows - 1) if rows.num_rows else rows
        newest = ~rows.select(list(keys)).to_pandas().duplicated(keep="last").to_numpy()
        return rows.filter(pa.array(newest))


def _micros(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


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
    settings: Settings,
    reader: wire.RespWriter | RoutedPipe,
    writer: wire.RespWriter | RoutedPipe,
    writes: _ViewWrites,
    start: datetime,
    end: datetime,
    progress: Progress | None,
) -> tuple[int, int]:
    """(rows read, rows written) of one view: its newest rows per entity read by DuckDB, or by
    Feast's Spark store (`feast.offline_engine: spark`), written by the same Redis writer."""
    batch_rows = settings.feast.materialize_batch_rows
    if uses_spark(settings):
        latest = spark_latest_rows(settings, writes.source, start, end)
        batches = latest.to_batches(max_chunksize=batch_rows)
        return _write_newer(reader, writer, writes, batches, latest.num_rows, progress)
    con = duckdb_connection()
    total = 0
    if progress:  # the count only feeds the progress bar: a replay's steps skip the scan
        scan = scan_sql(writes.source, start, end)
        (total,) = con.execute(f"SELECT count(*) FROM ({scan})").fetchall()[0]
    batches = con.sql(latest_rows_sql(writes.source, start, end)).to_arrow_reader(batch_rows)
    return _write_newer(reader, writer, writes, batches, total, progress)


def _stored_timestamps(
    reader: wire.RespWriter | RoutedPipe, keys: pa.Array, field: bytes, slots: list[int] | None
) -> list[Any]:
    """Each key's stored `_ts` of the view (None where there is none)."""
    if isinstance(reader, RoutedPipe):
        return reader.round_trip(wire.hget_command_array(keys, field).to_pylist(), slots)
    reader.send(wire.hget_commands(keys, field))
    return reader.replies(len(keys))


def _write_newer(
    reader: wire.RespWriter | RoutedPipe,
    writer: wire.RespWriter | RoutedPipe,
    writes: _ViewWrites,
    batches: Iterable[pa.RecordBatch],
    total: int,
    progress: Progress | None,
) -> tuple[int, int]:
    """(rows read, rows written) of batches holding one row per entity (keys, features, __ts):
    each row is written where it is newer than what Redis holds."""
    read = written = 0
    routed = isinstance(writer, RoutedPipe)  # a cluster: each command goes to its key's master

    def write(commands: pa.BinaryArray, slots: list[int] | None) -> int:
        if isinstance(writer, RoutedPipe):
            writer.round_trip(commands.to_pylist(), slots)
        else:
            writer.send(wire.concat(commands))
            writer.replies(len(commands))
        return len(commands)

    # Keys are unique within a run (newest row per entity), so batch k+1's timestamps can be
    # read while batch k is written: Redis works on one core, encoding on the other.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future[int] | None = None
        for batch in batches:
            # Encode every row's HSET first (while Redis writes the previous batch); the
            # stored timestamps then only decide which rows to keep.
            keys, commands, seconds, nanos = writes.encoded(batch)
            slots = [key_slot(k) for k in keys.to_pylist()] if routed else None
            stored = _stored_timestamps(reader, keys, writes.ts_field, slots)
            newer = wire.newer_than_stored(stored, seconds, nanos)
            read += batch.num_rows
            if progress:
                progress(writes.name, read, total)
            if not newer.all():
                commands = commands.filter(pa.array(newer))
                slots = [s for s, keep in zip(slots, newer, strict=True) if keep] if slots else None
            if pending:
                written += pending.result()
            pending = pool.submit(write, commands, slots) if len(commands) else None
        if pending:
            written += pending.result()
    return read, written
