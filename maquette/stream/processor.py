"""The speed layer: departure events on a Redis Stream, windowed aggregates pushed to Feast.

Michelangelo's Lambda architecture on one Redis. The batch layer (`backfill`, DuckDB over the
historical departures) and the speed layer (`StreamProcessor`, over the event stream) fill the
same Feast feature views from one definition per aggregate (`WindowAggregation`), which
generates both the backfill SQL and the streaming computation:

    publish() / replay() --XADD--> stream --XREADGROUP--> StreamProcessor
                                                            |-> online rows (Feast's Redis layout)
                                                            |-> offline rows (the push source's
                                                            |   batch source, a Parquet file)
                                                            '-> window state + counters + XACK,
                                                                one MULTI/EXEC per commit
    malformed or too-late events --> dead-letter stream, each with its reason

Window semantics, for a key k (an origin, a carrier) and a departure of k at event time t: the
row stamped t + 1 µs holds the aggregate of k's departures with t - window < time <= t. The
extra microsecond makes the point-in-time join (the newest row at or before the prediction
time T) see only departures strictly before T. Between departures the newest row stands; the
views' TTL (one window) nulls it once its departure is a window old.

Event time: the watermark is the newest event time seen minus `allowed_lateness_s`. An event
at or after the watermark is added to its windows and every row it changes is emitted again
(rows of the key's later departures within one window). An older event is counted and
dead-lettered with the reason; so is a malformed one.

Delivery: online rows are written as soon as a batch is read (a row replaces the stored one
unless that one is newer); every `commit_interval_s` the offline rows are merged into Parquet,
then the window state, dead letters, counters and XACK go to Redis in one transaction. After a
kill, the unacknowledged entries are read again, in order, from the last committed state, so
every value comes out the same whether or not the processor was killed.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pyarrow as pa
import redis

from maquette.config import Settings
from maquette.data.redis_server import redis_url
from maquette.data.sources import TableSummary, feature_table_path, require_loaded
from maquette.errors import ConfigError, DataNotLoaded, StoreUnavailable

if TYPE_CHECKING:
    from feast import Field as FeastField

    from maquette.features.layer import FeatureLayer

Aggregate = Literal["count", "sum", "mean"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# A row becomes visible one microsecond after the departure it includes (see the docstring).
STAMP_OFFSET_US = 1
_TIMESTAMP = pa.timestamp("us", tz="UTC")


# ---------------------------------------------------------------- the aggregation, defined once


@dataclass(frozen=True)
class WindowAggregation:
    """A sliding-window aggregate of one event value per key, feeding one Feast feature view."""

    view: str
    push_source: str
    key: str
    value: str
    window: timedelta
    features: tuple[tuple[str, Aggregate], ...]

    @property
    def window_us(self) -> int:
        return self.window // _US

    @property
    def feature_names(self) -> list[str]:
        return [name for name, _ in self.features]

    def feast_schema(self) -> list[FeastField]:
        """The feature view's schema: counts are Int64, sums and means Float64."""
        from feast import Field
        from feast.types import Float64, Int64

        return [Field(name=n, dtype=Int64 if f == "count" else Float64) for n, f in self.features]

    def arrow_schema(self) -> pa.Schema:
        """Columns of the offline table: key, event_timestamp, features."""
        return pa.schema(
            [(self.key, pa.string()), ("event_timestamp", _TIMESTAMP)]
            + [(n, pa.int64() if f == "count" else pa.float64()) for n, f in self.features]
        )

    def compute(self, values: Sequence[float]) -> dict[str, Any]:
        """The features over the values of one window (the streaming side)."""
        # fsum is exactly rounded, so the result does not depend on the order values arrived in.
        count, total = len(values), math.fsum(values)
        out: dict[str, Any] = {}
        for name, fn in self.features:
            out[name] = count if fn == "count" else total if fn == "sum" else total / count
        return out

    def backfill_sql(self, events: str) -> str:
        """DuckDB SQL for every row over the relation `events` (the batch side)."""
        k, t, v = _q(self.key), _q(EVENT_TIME), _q(self.value)
        # RANGE frames include both ends; all stored times are whole microseconds, so this
        # frame is exactly t - window < time <= t, as `_Window.values_at` computes it.
        frame = (
            f"PARTITION BY {k} ORDER BY {t} RANGE BETWEEN "
            f"INTERVAL {self.window_us - 1} MICROSECONDS PRECEDING AND CURRENT ROW"
        )
        count, total = f"count({v}) OVER w", f"sum({v}) OVER w"
        exprs = {"count": count, "sum": total, "mean": f"{total} / {count}"}
        select = ", ".join(f"{exprs[fn]} AS {_q(name)}" for name, fn in self.features)
        # Departures sharing a key and a time share their frame: DISTINCT keeps one row.
        return (
            f"SELECT DISTINCT {k}, {t} + INTERVAL {STAMP_OFFSET_US} MICROSECOND AS event_timestamp, "
            f"{select} FROM (SELECT {k}::VARCHAR AS {k}, {t}::TIMESTAMPTZ AS {t}, "
            f"{v}::DOUBLE AS {v} FROM ({events})) "
            f"WHERE {k} IS NOT NULL AND {k} <> '' AND {t} IS NOT NULL AND isfinite({v}) "
            f"WINDOW w AS ({frame}) ORDER BY {k}, event_timestamp"
        )


ORIGIN_LAST_HOUR = WindowAggregation(
    view="origin_last_hour",
    push_source="origin_last_hour_push",
    key="origin",
    value="dep_delay",
    window=timedelta(hours=1),
    features=(("origin_dep_delay_60m", "mean"), ("origin_departures_60m", "count")),
)
CARRIER_LAST_HOUR = WindowAggregation(
    view="carrier_last_hour",
    push_source="carrier_last_hour_push",
    key="carrier",
    value="dep_delay",
    window=timedelta(hours=1),
    features=(("carrier_dep_delay_60m", "mean"), ("carrier_departures_60m", "count")),
)
AGGREGATIONS: tuple[WindowAggregation, ...] = (ORIGIN_LAST_HOUR, CARRIER_LAST_HOUR)


# ---------------------------------------------------------------- the event


EVENT_TIME = "departed_at"
# One entry per departure; every field is a string (any Redis client can publish one).
EVENT_FIELDS: dict[str, str] = {
    "origin": "departure airport, e.g. JFK (required)",
    "carrier": "airline code, e.g. UA (required)",
    "departed_at": "actual departure, ISO 8601 with a zone: the event time (required)",
    "dep_delay": "departure delay in minutes, a number (required)",
    "flight_id": "the flight's id",
    "dest": "destination airport",
    "tailnum": "aircraft tail number",
    "scheduled_departure": "scheduled departure, ISO 8601 with a zone",
}
_KEYS = tuple(dict.fromkeys(a.key for a in AGGREGATIONS))
_VALUES = tuple(dict.fromkeys(a.value for a in AGGREGATIONS))
REQUIRED_FIELDS = (*_KEYS, EVENT_TIME, *_VALUES)


@dataclass(frozen=True, slots=True)
class Event:
    """A valid departure event: its time (µs since the epoch), keys and values."""

    time_us: int
    keys: dict[str, str]
    values: dict[str, float]


def parse_event(fields: Mapping[bytes, bytes]) -> Event | str:
    """The event held by a stream entry, or the reason it is malformed."""
    missing = [n for n in REQUIRED_FIELDS if not fields.get(n.encode())]
    if missing:
        return f"malformed: missing {', '.join(missing)}"
    try:
        keys = {name: fields[name.encode()].decode() for name in _KEYS}
        raw_time = fields[EVENT_TIME.encode()].decode()
    except UnicodeDecodeError:
        return "malformed: a key or the time is not UTF-8 text"
    try:
        when = datetime.fromisoformat(raw_time)
    except ValueError:
        return f"malformed: {EVENT_TIME} {raw_time!r} is not an ISO 8601 time"
    if when.tzinfo is None:
        return f"malformed: {EVENT_TIME} {raw_time!r} has no time zone"
    values = {}
    for name in _VALUES:
        raw = fields[name.encode()]
        try:
            value = float(raw)
        except ValueError:
            return f"malformed: {name} {raw[:40].decode(errors='replace')!r} is not a number"
        if not math.isfinite(value):
            return f"malformed: {name} is {value}"
        values[name] = value
    return Event((when - _EPOCH) // _US, keys, values)


def _encode(event: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in event.items():
        if value is None:
            continue
        out[name] = value.isoformat() if isinstance(value, datetime) else str(value)
    return out


def publish(
    settings: Settings, events: Iterable[Mapping[str, Any]], client: redis.Redis | None = None
) -> list[str]:
    """XADD departure events (dicts of EVENT_FIELDS) in one round trip; returns their ids."""
    client = client or _client(settings)
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(
            settings.stream.stream,
            _encode(event),  # type: ignore[arg-type]
            maxlen=settings.stream.max_len,
            approximate=True,
        )
    try:
        return [i.decode() for i in pipe.execute()]
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise _unavailable(settings, exc) from exc


# ---------------------------------------------------------------- historical events


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def events_sql(
    settings: Settings, start: datetime | None = None, end: datetime | None = None
) -> str:
    """The valid historical departures in [start, end), in event-time order (DuckDB SQL)."""
    source = settings.stream.events_source
    if source is None:
        raise DataNotLoaded(
            "stream.events_source is not set, so there are no historical events.",
            "Set stream.events_source in maquette.yaml to a table holding departures.",
        )
    path = require_loaded(settings, source)
    fields = ", ".join(_q(f) for f in EVENT_FIELDS)
    valid = [f"{_q(k)} IS NOT NULL AND {_q(k)} <> ''" for k in _KEYS]
    valid += [f"isfinite({_q(v)}::DOUBLE)" for v in _VALUES]
    valid.append(f"{_q(EVENT_TIME)} IS NOT NULL")
    if start is not None:
        valid.append(f"{_q(EVENT_TIME)} >= {_lit(start.isoformat())}::TIMESTAMPTZ")
    if end is not None:
        valid.append(f"{_q(EVENT_TIME)} < {_lit(end.isoformat())}::TIMESTAMPTZ")
    return (
        f"SELECT {fields} FROM read_parquet({_lit(path)}) WHERE {' AND '.join(valid)} "
        f"ORDER BY {_q(EVENT_TIME)}, flight_id"
    )


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")  # a long-running process writes a log
    return con


def backfill(settings: Settings) -> list[TableSummary]:
    """Write each aggregation's offline table from the historical departures (the batch layer).

    Events before `stream.backfill_before` are aggregated (all of them when unset); rows the
    stream already wrote after that instant are kept.
    """
    before = settings.stream.backfill_before
    events = events_sql(settings, end=before)
    con = _connect()
    out = []
    for agg in AGGREGATIONS:
        path = feature_table_path(settings, agg.view)
        sql = agg.backfill_sql(events)
        if before is not None and path.is_file():
            cutover = f"{_lit(before.isoformat())}::TIMESTAMPTZ"
            sql = (
                f"SELECT * FROM ({sql}) UNION ALL SELECT * FROM read_parquet({_lit(path)}) "
                f"WHERE event_timestamp > {cutover}"
            )
        try:
            _copy_durably(con, f"SELECT * FROM ({sql}) ORDER BY 1, 2", path)
        except duckdb.Error as exc:
            raise ConfigError(
                f"the stream backfill over {settings.stream.events_source!r} failed: {exc}",
                f"That table needs the event fields {list(EVENT_FIELDS)}; "
                "or set stream.events_source: null.",
            ) from exc
        ((rows, first, last),) = con.execute(
            "SELECT count(*), min(event_timestamp), max(event_timestamp) FROM read_parquet(?)",
            [str(path)],
        ).fetchall()
        out.append(TableSummary(agg.view, "feature", path, rows, first, last))
    return out


def _copy_durably(con: duckdb.DuckDBPyConnection, sql: str, path: Path) -> None:
    """COPY a query to Parquet beside `path`, fsync, rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    con.execute(f"COPY ({sql}) TO {_lit(tmp)} (FORMAT parquet, COMPRESSION zstd)")
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


# ---------------------------------------------------------------- replay


@dataclass
class ReplayResult:
    """What one replay published."""

    events: int = 0
    seconds: float = 0.0
    first: datetime | None = None
    last: datetime | None = None


def replay(
    settings: Settings,
    start: datetime,
    end: datetime | None = None,
    speed: float | None = 600.0,
    rate: float | None = None,
    limit: int | None = None,
    progress: Callable[[int, datetime], None] | None = None,
) -> ReplayResult:
    """Publish historical departures in event-time order on an accelerated clock.

    `speed` compresses event time (600: an hour of departures in 6 s; None: as fast as
    possible); `rate` instead paces a fixed number of events per second.
    """
    sql = events_sql(settings, start, end) + (f" LIMIT {int(limit)}" if limit else "")
    reader = _connect().sql(sql).to_arrow_reader(5_000)
    client = _client(settings)
    result = ReplayResult()
    began: float | None = None
    origin_us = 0
    pending: list[dict[str, Any]] = []
    for batch in reader:
        for event in batch.to_pylist():
            when = event[EVENT_TIME]
            if began is None:  # the clock starts with the first event
                began, origin_us = time.monotonic(), (when - _EPOCH) // _US
            if rate:
                due = result.events / rate
            elif speed:
                due = ((when - _EPOCH) // _US - origin_us) / 1e6 / speed
            else:
                due = 0.0
            wait = began + due - time.monotonic()
            if wait > 0.002 or len(pending) >= 1_000:
                publish(settings, pending, client)
                pending.clear()
                if progress:
                    progress(result.events, when)
                wait = began + due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            pending.append(event)
            result.events += 1
            result.first = result.first or when
            result.last = when
    publish(settings, pending, client)
    result.seconds = time.monotonic() - (began or time.monotonic())
    return result


# ---------------------------------------------------------------- window state


class _Window:
    """One key's event times (µs, sorted) and values, back to the eviction horizon."""

    __slots__ = ("times", "values")

    def __init__(self, times: list[int] | None = None, values: list[float] | None = None) -> None:
        self.times = times or []
        self.values = values or []

    def add(self, time_us: int, value: float) -> None:
        i = bisect.bisect_right(self.times, time_us)
        self.times.insert(i, time_us)
        self.values.insert(i, value)

    def changed_by(self, time_us: int, window_us: int) -> set[int]:
        """Times of the rows an event at `time_us` belongs to: those in [t, t + window)."""
        lo = bisect.bisect_left(self.times, time_us)
        hi = bisect.bisect_left(self.times, time_us + window_us)
        return set(self.times[lo:hi])

    def values_at(self, time_us: int, window_us: int) -> list[float]:
        """Values of the events with time_us - window < time <= time_us."""
        lo = bisect.bisect_right(self.times, time_us - window_us)
        hi = bisect.bisect_right(self.times, time_us)
        return self.values[lo:hi]

    def evict_through(self, cutoff_us: int) -> None:
        i = bisect.bisect_right(self.times, cutoff_us)
        del self.times[:i], self.values[:i]

    def dumps(self) -> bytes:
        return array("q", self.times).tobytes() + array("d", self.values).tobytes()

    @classmethod
    def loads(cls, raw: bytes) -> _Window:
        half = len(raw) // 2
        return cls(array("q", raw[:half]).tolist(), array("d", raw[half:]).tolist())


def _state_key(settings: Settings) -> str:
    return f"{settings.stream.stream}:state"


def _stats_key(settings: Settings) -> str:
    return f"{settings.stream.stream}:stats"


_MAX_TIME = b"__max_time__"


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(redis_url(settings), socket_timeout=30, socket_connect_timeout=5)


def _unavailable(settings: Settings, exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(
        f"Redis at {redis_url(settings)} is unreachable: {exc}",
        "Start it with `maquette redis start` or fix MAQUETTE_REDIS_URL.",
    )


def _iso(time_us: int) -> str:
    return (_EPOCH + time_us * _US).isoformat()


# ---------------------------------------------------------------- the processor


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


@dataclass(frozen=True)
class _Target:
    """A Feast feature view fed by an aggregation's push source."""

    agg: WindowAggregation
    view: str
    batch_path: Path


@dataclass
class _Uncommitted:
    """Everything since the last commit: acknowledged together, or not at all."""

    ids: list[bytes] = field(default_factory=list)
    rows: dict[str, dict[tuple[str, int], dict[str, Any]]] = field(default_factory=dict)
    dead: list[dict[bytes, bytes]] = field(default_factory=list)
    dirty: set[tuple[str, str]] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)


class StreamProcessor:
    """Consumes the event stream, keeps the windows, pushes rows to Feast's stores.

    One processor per stream: its window state is the whole stream's.
    `feast_push=True` writes online rows through stock `FeatureStore.push`, one event at a
    time (the benchmark's reference); offline rows and commits are the same either way.
    """

    def __init__(self, settings: Settings, feast_push: bool = False) -> None:
        from maquette.features.layer import FeatureLayer

        self.settings = settings
        self.conf = settings.stream
        self.client = _client(settings)
        self.layer: FeatureLayer = FeatureLayer(settings)
        self.feast_push = feast_push
        self.lateness_us = int(self.conf.allowed_lateness_s * 1e6)
        self.targets = self._resolve_targets()
        self.windows: dict[tuple[str, str], _Window] = {}
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
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise _unavailable(settings, exc) from exc

    # ------------------------------------------------------------ setup

    def _resolve_targets(self) -> list[_Target]:
        # Feast's push semantics: a push goes to every feature view whose source is the push source.
        views = self.layer.store.list_feature_views(allow_cache=False)
        targets = []
        for agg in AGGREGATIONS:
            fed = [v for v in views if v.stream_source and v.stream_source.name == agg.push_source]
            if not fed:
                raise DataNotLoaded(
                    f"no feature view is fed by the push source {agg.push_source!r}.",
                    "Declare it in feature_repo/ and run `maquette features apply`.",
                )
            for view in fed:
                known = {f.name for f in view.features}
                if missing := [n for n in agg.feature_names if n not in known]:
                    raise DataNotLoaded(
                        f"feature view {view.name!r} lacks {missing}.",
                        "Align feature_repo/ with maquette.stream.processor and run `maquette features apply`.",
                    )
                path = Path(view.batch_source.path)  # type: ignore[union-attr]
                targets.append(_Target(agg, view.name, path))
        return targets

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.conf.stream, self.conf.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _load_state(self) -> None:
        stored: dict[bytes, bytes] = self.client.hgetall(_state_key(self.settings))  # type: ignore[assignment]
        if _MAX_TIME not in stored:
            self._warm_start()
            return
        self.max_time = int(stored.pop(_MAX_TIME))
        for name, raw in stored.items():
            view, _, key = name.decode().partition(":")
            self.windows[(view, key)] = _Window.loads(raw)

    def _warm_start(self) -> None:
        """A fresh processor starts with the last window of history the backfill ends with."""
        before = self.conf.backfill_before
        if before is None or self.conf.events_source is None:
            return
        horizon = before - max(a.window for a in AGGREGATIONS)
        try:
            sql = events_sql(self.settings, horizon, before)
        except DataNotLoaded:
            return
        for event in _connect().sql(sql).to_arrow_table().to_pylist():
            time_us = (event[EVENT_TIME] - _EPOCH) // _US
            for agg in AGGREGATIONS:
                slot = (agg.view, str(event[agg.key]))
                self.windows.setdefault(slot, _Window()).add(time_us, float(event[agg.value]))
                self._todo.dirty.add(slot)
            self.max_time = time_us if self.max_time is None else max(self.max_time, time_us)

    # ------------------------------------------------------------ reading and applying

    def poll(self) -> int:
        """Read one batch, apply it and write its online rows; returns the entries read."""
        conf = self.conf
        redelivery = self._cursor != b">"
        try:
            reply = self.client.xreadgroup(
                conf.group,
                conf.consumer,
                {conf.stream: self._cursor},
                count=conf.batch,
                block=None if redelivery else conf.block_ms,
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise _unavailable(self.settings, exc) from exc
        entries = reply[0][1] if reply else []
        if redelivery:
            if not entries:
                self._cursor = b">"
                return self.poll()
            self._cursor = entries[-1][0]
            self.result.redelivered += len(entries)
        touched = self._apply(entries)
        self._emit(touched)
        return len(entries)

    def _apply(
        self, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> dict[tuple[str, str], set[int]]:
        touched: dict[tuple[str, str], set[int]] = {}
        for entry_id, fields in entries:
            self._todo.ids.append(entry_id)
            event = parse_event(fields) if fields else "malformed: entry trimmed before processing"
            if isinstance(event, str):
                self._reject(entry_id, fields, event, "malformed")
                continue
            if self.max_time is not None and event.time_us < self.max_time - self.lateness_us:
                reason = (
                    f"late: {EVENT_TIME} {_iso(event.time_us)} is more than "
                    f"{self.conf.allowed_lateness_s:g} s behind the newest event time "
                    f"{_iso(self.max_time)}"
                )
                self._reject(entry_id, fields, reason, "late")
                continue
            self.max_time = (
                event.time_us if self.max_time is None else max(self.max_time, event.time_us)
            )
            self._todo.counts["events"] += 1
            self.result.events += 1
            for agg in AGGREGATIONS:
                slot = (agg.view, event.keys[agg.key])
                window = self.windows.setdefault(slot, _Window())
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

    def _emit(self, touched: dict[tuple[str, str], set[int]]) -> None:
        """Rows for every changed (key, time), online rows for each key's newest, then evict."""
        aggs = {a.view: a for a in AGGREGATIONS}
        online: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
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

    def _write_online(self, rows: dict[str, list[tuple[str, int, dict[str, Any]]]]) -> int:
        """Feast's Redis layout, in bulk: each key's newest row, unless Redis holds a newer one."""
        from maquette.features import redis_layout as wire

        project = self.settings.feast.project
        plans = []
        reads = self.client.pipeline(transaction=False)
        for target in self.targets:
            view_rows = rows.get(target.agg.view)
            if not view_rows:
                continue
            agg = target.agg
            keys = wire.encode_entity_keys(
                {agg.key: pa.array([r[0] for r in view_rows], pa.string())},
                {agg.key: _feast_type("string")},
                project,
            ).to_pylist()
            stamps = pa.array([r[1] + STAMP_OFFSET_US for r in view_rows], pa.int64())
            ts_proto, seconds, nanos = wire.encode_timestamps(stamps.cast(_TIMESTAMP))
            columns = [
                (
                    wire.field_hash(target.view, name),
                    wire.encode_values(
                        pa.array([r[2][name] for r in view_rows]), _feast_type(fn)
                    ).to_pylist(),
                )
                for name, fn in agg.features
            ]
            ts_name = wire.ts_field(target.view)
            for key in keys:
                reads.hget(key, ts_name)
            plans.append((keys, ts_name, ts_proto.to_pylist(), seconds, nanos, columns))
        stored = reads.execute()
        writes = self.client.pipeline(transaction=False)
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
        import pandas as pd
        from feast.data_source import PushMode

        for agg in AGGREGATIONS:
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
                    con = _connect()
                    con.execute("SET threads = 1")  # leave the other core to reads and Redis
                _merge_rows(con, target, rows)
                self.result.offline_rows += len(rows)
        todo.counts["offline_rows"] += sum(len(r) for r in todo.rows.values())
        state_key, stats = _state_key(self.settings), _stats_key(self.settings)
        pipe = self.client.pipeline(transaction=True)
        for name, raw in state.items():
            if raw is None:
                pipe.hdel(state_key, name)
            else:
                pipe.hset(state_key, name, raw)
        if max_time is not None:
            pipe.hset(state_key, _MAX_TIME, str(max_time))
            pipe.hset(stats, "watermark", _iso(max_time - self.lateness_us))
        for letter in todo.dead:
            pipe.xadd(self.conf.dead_letter, letter, maxlen=self.conf.max_len, approximate=True)  # type: ignore[arg-type]
        for name, count in todo.counts.items():
            pipe.hincrby(stats, name, count)
        pipe.hset(stats, "committed_at", datetime.now(UTC).isoformat())
        if todo.ids:
            pipe.xack(self.conf.stream, self.conf.group, *todo.ids)
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise _unavailable(self.settings, exc) from exc
        self.result.commits += 1

    # ------------------------------------------------------------ the loop

    def run(
        self,
        until_idle_s: float | None = None,
        max_events: int | None = None,
        stop: threading.Event | None = None,
    ) -> RunResult:
        """Poll and commit until stopped, idle for `until_idle_s`, or `max_events` entries read."""
        began = idle_since = time.monotonic()
        read = 0
        while not (stop and stop.is_set()):
            got = self.poll()
            read += got
            now = time.monotonic()
            idle_since = now if got else idle_since
            if now - self._last_commit >= self.conf.commit_interval_s:
                self.commit(wait=False)
            if until_idle_s is not None and now - idle_since >= until_idle_s:
                break
            if max_events is not None and read >= max_events:
                break
        self.commit()
        self.result.seconds = time.monotonic() - began
        return self.result


def _feast_type(kind: str) -> Any:
    from feast.types import Float64, Int64, String

    return {"string": String, "count": Int64}.get(kind, Float64)


def _merge_rows(
    con: duckdb.DuckDBPyConnection, target: _Target, rows: dict[tuple[str, int], dict[str, Any]]
) -> None:
    """Rows replace those with the same key and timestamp in the view's Parquet file."""
    agg = target.agg
    ordered = sorted(rows.items())
    columns: dict[str, Any] = {
        agg.key: [k for (k, _), _ in ordered],
        "event_timestamp": pa.array([t + STAMP_OFFSET_US for (_, t), _ in ordered]).cast(
            _TIMESTAMP
        ),
    }
    for name in agg.feature_names:
        columns[name] = [values[name] for _, values in ordered]
    con.register("new_rows", pa.table(columns, schema=agg.arrow_schema()))
    sql = "SELECT * FROM new_rows"
    if target.batch_path.is_file():
        k = _q(agg.key)
        sql += (
            f" UNION ALL SELECT o.* FROM read_parquet({_lit(target.batch_path)}) o "
            f"ANTI JOIN new_rows n ON o.{k} = n.{k} AND o.event_timestamp = n.event_timestamp"
        )
    # No ORDER BY: sorting the whole file on every commit would cost more than the merge;
    # readers (the ASOF join, materialize) sort by key and time themselves.
    _copy_durably(con, sql, target.batch_path)
    con.unregister("new_rows")


# ---------------------------------------------------------------- operating it


@dataclass(frozen=True)
class StreamStatus:
    """The stream, its consumer group and the processor's committed totals."""

    stream: str
    length: int
    pending: int
    undelivered: int | None
    events: int
    late: int
    malformed: int
    offline_rows: int
    dead_letters: int
    watermark: str | None
    committed_at: str | None


def status(settings: Settings) -> StreamStatus:
    """Where the speed layer stands (what `maquette stream status` prints)."""
    conf, client = settings.stream, _client(settings)
    try:
        length = int(client.xlen(conf.stream))
        groups = client.xinfo_groups(conf.stream) if length or client.exists(conf.stream) else []
        group = next((g for g in groups if g["name"].decode() == conf.group), None)
        stats = {k.decode(): v.decode() for k, v in client.hgetall(_stats_key(settings)).items()}  # type: ignore[union-attr]
        dead = int(client.xlen(conf.dead_letter))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise _unavailable(settings, exc) from exc
    lag = group.get("lag") if group else length
    if group and lag is None:  # Redis < 7 has no lag field: count what follows the last delivery
        after = b"(" + group["last-delivered-id"]
        lag = len(client.xrange(conf.stream, after, "+", count=100_000))
    return StreamStatus(
        conf.stream,
        length,
        int(group["pending"]) if group else 0,
        int(lag) if lag is not None else None,
        int(stats.get("events", 0)),
        int(stats.get("late", 0)),
        int(stats.get("malformed", 0)),
        int(stats.get("offline_rows", 0)),
        dead,
        stats.get("watermark"),
        stats.get("committed_at"),
    )


def dead_letters(settings: Settings, count: int = 20) -> list[dict[str, str]]:
    """The newest rejected events, each with its reason and source id."""
    entries = _client(settings).xrevrange(settings.stream.dead_letter, count=count)
    return [
        {"id": i.decode(), **{k.decode(): v.decode(errors="replace") for k, v in f.items()}}
        for i, f in entries
    ]


def reset(settings: Settings) -> None:
    """Forget the stream: events, consumer group, window state, counters and dead letters.

    Feature values already pushed stay in Feast's stores.
    """
    conf = settings.stream
    _client(settings).delete(
        conf.stream, conf.dead_letter, _state_key(settings), _stats_key(settings)
    )
