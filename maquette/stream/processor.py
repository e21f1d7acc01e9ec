"""The speed layer's processor: events from a Redis Stream, windowed aggregates pushed to Feast.

Michelangelo's Lambda architecture on one Redis. The batch layer (`backfill`, DuckDB over the
historical events) and the speed layer (`StreamProcessor`, over the event stream) fill the
same Feast feature views from one definition per aggregate (`WindowAggregation`):

    publish() / replay() --XADD--> stream --XREADGROUP--> StreamProcessor
                                                            |-> online rows (Feast's Redis layout)
                                                            |-> offline rows (the push source's
                                                            |   batch source, a Parquet file)
                                                            '-> window state + counters + XACK,
                                                                one MULTI/EXEC per commit
    malformed or too-late events --> dead-letter stream, each with its reason

Event time: the watermark is the newest event time seen minus `allowed_lateness_s`. An event
at or after the watermark is added to its windows and every row it changes is emitted again
(rows of the key's later events within one window). An older event is counted and
dead-lettered with the reason; so is a malformed one, and one whose time is more than
`max_event_ahead` ahead of the processor's clock (the wall clock, or the replay's clock given
as `clock`): a single event from the year 9999 would otherwise make every later event late.
A state committed before that check (a watermark ahead of the clock) is repaired at start:
the events ahead of the clock are dropped from the windows and the watermark is the newest
event left; an online row stamped ahead of the clock is overwritten by the next real one.

Delivery: online rows are written as soon as a batch is read (a row replaces the stored one
unless that one is newer); every `commit_interval_s` the offline rows are merged into Parquet,
then the window state, dead letters, counters and XACK go to Redis in one transaction. After a
kill, the unacknowledged entries are read again, in order, from the last committed state, so
every value comes out the same whether or not the processor was killed.

Redis outages: `run` waits for Redis with backoff (`reconnect`), then starts again from what
Redis committed, exactly as a restarted processor would: the window state, its own pending
entries first, then new ones. What was read but not committed is read again; nothing
acknowledged is lost or counted twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import redis
from feast.data_source import PushMode

from maquette.config import Settings
from maquette.data.sources import TIMESTAMP_TYPE
from maquette.data.sql import duckdb_connection
from maquette.faults import crash_point
from maquette.features import redis_layout as wire
from maquette.features.layer import FeatureLayer
from maquette.features.redis_cluster import is_cluster, shared_store
from maquette.stream.aggregations import (
    STAMP_OFFSET_US,
    feast_type,
    key_arrow_type,
    stream_definition,
)
from maquette.stream.events import (
    Event,
    epoch_us,
    iso_time,
    parse_event,
    stream_client,
    stream_unavailable,
    trim_acknowledged,
)
from maquette.stream.reconnect import REDIS_DOWN, wait_for_redis, without_retries
from maquette.stream.state import (
    Key,
    Slot,
    drop_events_after,
    load_windows,
    warm_start_windows,
)
from maquette.stream.targets import merge_rows, resolve_targets
from maquette.stream.windows import MAX_TIME_FIELD, Window, state_key, stats_key
from maquette.window_spec import parse_duration

log = logging.getLogger("maquette.stream")


def wall_clock() -> datetime:
    """The processor's clock when it runs live: now, in UTC."""
    return datetime.now(UTC)


@dataclass
class RunResult:
    """What a processor run did (this run only; `status` holds the running totals)."""

    events: int = 0
    late: int = 0
    malformed: int = 0
    redelivered: int = 0
    online_rows: int = 0
    offline_rows: int = 0
    commits: int = 0
    seconds: float = 0.0


@dataclass
class _Uncommitted:
    """Everything since the last commit: acknowledged together, or not at all."""

    ids: list[bytes] = field(default_factory=list)
    rows: dict[str, dict[tuple[Key, int], dict[str, Any]]] = field(default_factory=dict)
    dead: list[dict[bytes, bytes]] = field(default_factory=list)
    dirty: set[Slot] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)


class StreamProcessor:
    """Consumes the event stream, keeps the windows, pushes rows to Feast's stores.

    One processor per stream: its window state is the whole stream's.
    `feast_push=True` writes online rows through stock `FeatureStore.push`, one event at a
    time (the benchmark's reference); offline rows and commits are the same either way.
    """

    def __init__(
        self,
        settings: Settings,
        feast_push: bool = False,
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        self.settings = settings
        self.conf = settings.stream
        # Events later than clock() + max_event_ahead are dead-lettered (a replay passes its
        # simulated clock; live, the wall clock).
        self.clock = clock
        self.ahead_us = int(parse_duration(self.conf.max_event_ahead).total_seconds() * 1e6)
        self.definition = stream_definition(settings)
        self.client = stream_client(settings)
        without_retries(self.client)
        self.layer: FeatureLayer = FeatureLayer(settings)
        # Online rows go where the features are read (the feature layer's cluster client when
        # there is one); the stream, its state and commits are keys of one hash tag there.
        self.online = self.layer.redis if is_cluster(settings) else self.client
        self.feast_push = feast_push
        self.lateness_us = int(self.conf.allowed_lateness_s * 1e6)
        self.targets = resolve_targets(self.layer, self.definition)
        self.windows: dict[Slot, Window] = {}
        self.max_time: int | None = None
        self.result = RunResult()
        self._todo = _Uncommitted()
        self._cursor = b"0"  # this consumer's unacknowledged entries first, then new ones
        self._last_commit = time.monotonic()
        self._commit_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._committing: Future[None] | None = None
        try:
            self._ensure_group()
            self._load_state()
        except REDIS_DOWN as exc:
            raise stream_unavailable(settings, exc) from exc

    # ------------------------------------------------------------ setup

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.conf.stream, self.conf.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _load_state(self) -> None:
        stored = load_windows(self.settings, self.client, self.definition)
        if stored is None:
            self.windows, self.max_time, dirty = warm_start_windows(self.settings, self.definition)
            self._todo.dirty |= dirty
            return
        self.windows, self.max_time = stored
        if self.max_time > self._horizon_us():
            dropped, dirty, self.max_time = drop_events_after(self.windows, self._horizon_us())
            self._todo.dirty |= dirty
            self._todo.counts["ahead_dropped"] += dropped

    def _horizon_us(self) -> int:
        """The latest event time accepted now: the clock plus max_event_ahead."""
        return epoch_us(self.clock()) + self.ahead_us

    # ------------------------------------------------------------ reading and applying

    def poll(self) -> int:
        """Read one batch, apply it and write its online rows; returns the entries read."""
        try:
            return self._poll()
        except REDIS_DOWN as exc:
            raise stream_unavailable(self.settings, exc) from exc

    def _poll(self) -> int:
        conf = self.conf
        redelivery = self._cursor != b">"
        reply = self.client.xreadgroup(
            conf.group,
            conf.consumer,
            {conf.stream: self._cursor},
            count=conf.batch,
            block=None if redelivery else conf.block_ms,
        )
        entries = reply[0][1] if reply else []
        if redelivery:
            if not entries:
                self._cursor = b">"
                return self._poll()
            self._cursor = entries[-1][0]
            self.result.redelivered += len(entries)
        touched = self._apply(entries)
        self._emit(touched)
        return len(entries)

    def _apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> dict[Slot, set[int]]:
        touched: dict[Slot, set[int]] = {}
        horizon = self._horizon_us() if entries else 0
        for entry_id, fields in entries:
            self._todo.ids.append(entry_id)
            event = (
                parse_event(fields, self.definition)
                if fields
                else "malformed: entry trimmed before processing"
            )
            if isinstance(event, str):
                self._reject(entry_id, fields, event, "malformed")
                continue
            if event.time_us > horizon:
                reason = (
                    f"malformed: {self.definition.event_time} {iso_time(event.time_us)} is more "
                    f"than {self.conf.max_event_ahead} ahead of the processor's clock "
                    f"{iso_time(horizon - self.ahead_us)} (stream.max_event_ahead)"
                )
                self._reject(entry_id, fields, reason, "malformed")
                continue
            if self.max_time is not None and event.time_us < self.max_time - self.lateness_us:
                reason = (
                    f"late: {self.definition.event_time} {iso_time(event.time_us)} is more than "
                    f"{self.conf.allowed_lateness_s:g} s behind the newest event time "
                    f"{iso_time(self.max_time)}"
                )
                self._reject(entry_id, fields, reason, "late")
                continue
            self.max_time = (
                event.time_us if self.max_time is None else max(self.max_time, event.time_us)
            )
            self._todo.counts["events"] += 1
            self.result.events += 1
            for agg in self.definition.aggregations:
                slot = (agg.view, event.keys[agg.key])
                window = self.windows.setdefault(slot, Window())
                window.add(event.time_us, event.values[agg.value])
                changed = window.changed_by(event.time_us, agg.window_us)
                touched.setdefault(slot, set()).update(changed)
            if self.feast_push:
                self._push_with_feast(event)
        return touched

    def _reject(
        self, entry_id: bytes, fields: dict[bytes, bytes] | None, reason: str, kind: str
    ) -> None:
        letter = {b"source_id": entry_id, b"reason": reason.encode()}
        letter.update({k: v for k, v in (fields or {}).items() if k not in letter})
        self._todo.dead.append(letter)
        self._todo.counts[kind] += 1
        setattr(self.result, kind, getattr(self.result, kind) + 1)

    def _emit(self, touched: dict[Slot, set[int]]) -> None:
        """Rows for every changed (key, time), online rows for each key's newest, then evict."""
        aggs = {a.view: a for a in self.definition.aggregations}
        online: dict[str, list[tuple[Key, int, dict[str, Any]]]] = {}
        for (view, key), times in touched.items():
            agg, window = aggs[view], self.windows[(view, key)]
            rows = self._todo.rows.setdefault(view, {})
            for t in times:
                rows[(key, t)] = agg.compute(window.values_at(t, agg.window_us))
            if window.times[-1] in times:
                online.setdefault(view, []).append(
                    (key, window.times[-1], rows[(key, window.times[-1])])
                )
        if online and not self.feast_push:
            self.result.online_rows += self._write_online(online)
        assert self.max_time is not None or not touched
        for slot in touched:
            # Nothing older than the watermark minus a window can enter a future row.
            agg, window = aggs[slot[0]], self.windows[slot]
            window.evict_through(self.max_time - self.lateness_us - agg.window_us)  # type: ignore[operator]
            if not window.times:
                del self.windows[slot]
            self._todo.dirty.add(slot)

    # ------------------------------------------------------------ writing

    def _write_online(self, rows: dict[str, list[tuple[Key, int, dict[str, Any]]]]) -> int:
        """Feast's Redis layout, in bulk: each key's newest row, unless Redis holds a newer one."""
        project = self.settings.feast.project
        plans = []
        reads = self.online.pipeline(transaction=False)
        for target in self.targets:
            view_rows = rows.get(target.agg.view)
            if not view_rows:
                continue
            agg = target.agg
            keys = wire.encode_entity_keys(
                {agg.key: pa.array([r[0] for r in view_rows], key_arrow_type(agg.key_type))},
                {agg.key: feast_type(agg.key_type)},
                project,
            ).to_pylist()
            stamps = pa.array([r[1] + STAMP_OFFSET_US for r in view_rows], pa.int64())
            ts_proto, seconds, nanos = wire.encode_timestamps(stamps.cast(TIMESTAMP_TYPE))
            columns = [
                (
                    wire.field_hash(target.view, name),
                    wire.encode_values(
                        pa.array([r[2][name] for r in view_rows]), feast_type(fn)
                    ).to_pylist(),
                )
                for name, fn in agg.features
            ]
            ts_name = wire.ts_field(target.view)
            for key in keys:
                reads.hget(key, ts_name)
            plans.append((keys, ts_name, ts_proto.to_pylist(), seconds, nanos, columns))
        # A row stamped ahead of the clock (written before such events were refused) would
        # never be overwritten: it counts as absent.
        horizon_s = self._horizon_us() / 1e6
        stored = [
            None
            if (when := wire.decode_timestamp_seconds(raw)) is not None and when > horizon_s
            else raw
            for raw in reads.execute()
        ]
        writes = self.online.pipeline(transaction=False)
        written = pos = 0
        for keys, ts_name, ts_proto, seconds, nanos, columns in plans:
            # Feast skips a row whose timestamp equals the stored one; here an equal timestamp
            # brings a corrected value (a late event), so only a newer stored row wins (+1 ns).
            keep = wire.newer_than_stored(stored[pos : pos + len(keys)], seconds, nanos + 1)
            pos += len(keys)
            for i, key in enumerate(keys):
                if keep[i]:
                    mapping = {ts_name: ts_proto[i], **{f: values[i] for f, values in columns}}
                    writes.hset(key, mapping=mapping)  # type: ignore[arg-type]
                    written += 1
        writes.execute()
        return written

    def _push_with_feast(self, event: Event) -> None:
        """Stock Feast: one `FeatureStore.push` per view for this one event (benchmark reference)."""
        for agg in self.definition.aggregations:
            window = self.windows[(agg.view, event.keys[agg.key])]
            newest = window.times[-1]
            values = agg.compute(window.values_at(newest, agg.window_us))
            frame = pd.DataFrame(
                {
                    agg.key: [event.keys[agg.key]],
                    "event_timestamp": [
                        pd.Timestamp(newest + STAMP_OFFSET_US, unit="us", tz="UTC")
                    ],
                    **{name: [value] for name, value in values.items()},
                }
            )
            self.layer.store.push(agg.push_source, frame, to=PushMode.ONLINE)
            self.result.online_rows += 1

    def commit(self, wait: bool = True) -> None:
        """Offline rows to Parquet, then state, dead letters, counters and XACK in one MULTI.

        With `wait=False` the writing runs on the commit thread while reading goes on (a big
        Parquet merge must not hold back fresh values); commits still happen one at a time.
        """
        try:
            self._commit(wait)
        except REDIS_DOWN as exc:
            raise stream_unavailable(self.settings, exc) from exc

    def _commit(self, wait: bool) -> None:
        todo, self._todo = self._todo, _Uncommitted()
        # The state as of this commit's last entry, taken before later entries change it.
        state = {
            f"{view}:{key}": (w.dumps() if (w := self.windows.get((view, key))) else None)
            for view, key in todo.dirty
        }
        self._finish_commit()
        self._committing = self._commit_thread.submit(self._write, todo, state, self.max_time)
        self._last_commit = time.monotonic()
        if wait:
            self._finish_commit()

    def _finish_commit(self) -> None:
        """Wait for the commit in flight; its error, if any, is raised here."""
        if self._committing is not None:
            future, self._committing = self._committing, None
            future.result()

    def _write(
        self, todo: _Uncommitted, state: dict[str, bytes | None], max_time: int | None
    ) -> None:
        con = None
        for target in self.targets:
            rows = todo.rows.get(target.agg.view)
            if rows:
                if con is None:
                    con = duckdb_connection(quiet=True, private=True)
                    con.execute("SET threads = 1")  # leave the other core to reads and Redis
                merge_rows(con, target, rows)
                self.result.offline_rows += len(rows)
                # One view's Parquet holds the commit's rows, the next not yet: a kill here must
                # not double them (test_stream_kill.py::test_processor_killed_inside_a_commit_...).
                crash_point("stream.view_merged")
        # Parquet written; state, counters and XACK not: the entries come again and must count once
        # (tests/e2e/test_stream_kill.py::test_processor_killed_inside_a_commit_resumes_exactly).
        crash_point("stream.offline_written")
        todo.counts["offline_rows"] += sum(len(r) for r in todo.rows.values())
        windows, stats = state_key(self.settings), stats_key(self.settings)
        pipe = self.client.pipeline(transaction=True)
        for name, raw in state.items():
            if raw is None:
                pipe.hdel(windows, name)
            else:
                pipe.hset(windows, name, raw)
        if max_time is not None:
            pipe.hset(windows, MAX_TIME_FIELD, str(max_time))
            pipe.hset(stats, "watermark", iso_time(max_time - self.lateness_us))
        for letter in todo.dead:
            pipe.xadd(self.conf.dead_letter, letter, maxlen=self.conf.max_len, approximate=True)
        for name, count in todo.counts.items():
            pipe.hincrby(stats, name, count)
        pipe.hset(stats, "committed_at", datetime.now(UTC).isoformat())
        if todo.ids:
            pipe.xack(self.conf.stream, self.conf.group, *todo.ids)
        pipe.execute()
        if todo.ids and self.conf.trim_acknowledged:
            # Best effort: a trim that fails now happens at the next commit.
            with contextlib.suppress(redis.RedisError):
                trim_acknowledged(self.client, self.conf.stream)
        self.result.commits += 1

    # ------------------------------------------------------------ the loop

    def run(
        self,
        until_idle_s: float | None = None,
        max_events: int | None = None,
        stop: threading.Event | None = None,
    ) -> RunResult:
        """Poll and commit until stopped, idle for `until_idle_s`, or `max_events` entries read.

        While Redis is unreachable it waits (time without Redis is not idle time), then
        resumes from the committed state.
        """
        began = idle_since = time.monotonic()
        read, redis_gone = 0, False
        while not (stop and stop.is_set()):
            try:
                got = self._poll()
                if time.monotonic() - self._last_commit >= self.conf.commit_interval_s:
                    self._commit(wait=False)
            except REDIS_DOWN as exc:
                if not self._wait_out_outage(exc, stop):
                    redis_gone = True  # stopped without Redis: what was read stays pending
                    break
                idle_since = time.monotonic()
                continue
            read += got
            now = time.monotonic()
            idle_since = now if got else idle_since
            if until_idle_s is not None and now - idle_since >= until_idle_s:
                break
            if max_events is not None and read >= max_events:
                break
        if not redis_gone:
            self.commit()
        self.result.seconds = time.monotonic() - began
        return self.result

    def _wait_out_outage(self, error: Exception, stop: threading.Event | None) -> bool:
        """Wait for Redis, then start again from its committed state; False if stopped first.

        Whatever was read since the last commit is dropped: its entries are still pending and
        are read again, so windows and counters come out as if Redis had never gone.
        """
        with contextlib.suppress(*REDIS_DOWN):
            self._finish_commit()  # the commit in flight went through whole or not at all
        return wait_for_redis(shared_store(self.settings), error, self._restart, stop)

    def _restart(self) -> None:
        """What a new processor does at start: the group, the committed state, own PEL first."""
        self.windows, self.max_time = {}, None
        self._todo, self._cursor = _Uncommitted(), b"0"
        self._ensure_group()
        self._load_state()
        self._last_commit = time.monotonic()
