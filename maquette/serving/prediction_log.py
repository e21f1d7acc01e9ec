"""The prediction log: every served prediction, durable from before the response to Parquet.

The service appends each request's predictions to a Redis Stream (the embedded Redis keeps an
append-only file) before it answers: one entry per request and version, its per-prediction
fields as columns (`expand` reads it back as one row per prediction; an entry of one prediction
as plain values, as logged before, reads back the same). `drain` moves entries into Parquet under the offline store,
partitioned by date and model, through a consumer group, and acknowledges (then deletes) them
only after the file is written and fsynced. Delivery is at least once: entries of a batch that
was written but not acknowledged come back after a crash and are rewritten to the same file
name (derived from their stream ids), and readers de-duplicate by prediction id, so nothing is
lost or counted twice.

One drain at a time: the deployment, the monitor flow, the CLI and the demo all drain as the
same consumer, so a drain holds an exclusive lock (`<state>/locks/prediction-log-drain.lock`)
while it reads, writes and acknowledges; another waits for it (`drain_lock_wait_s`), then
moves what is left. Each file is written to a temporary file of its own in the target folder,
fsynced, renamed and the folder fsynced: a drain never truncates a file another one wrote.
A batch is at most `drain_batch` entries and about `drain_max_bytes` of them. The stream has
no MAXLEN: trimming would drop predictions not yet drained.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from maquette.config import Settings
from maquette.data.redis_server import redis_url
from maquette.data.secrets import redact
from maquette.data.shared_files import exclusive, lock_path
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.errors import DataNotLoaded, StoreUnavailable
from maquette.faults import crash_point

GROUP = "drain"
FIELD = b"p"
# How long a request waits for Redis to confirm its log entries before it gets a 503 saying
# why: at most 5 s, and well within serving.timeout_s (3 s of the default 5 s). At 5 s BentoML's
# bare 504 ("Not able to process the request in 5.0 seconds") answered first on its API path.
WRITE_TIMEOUT_S = 5.0
WRITE_SHARE_OF_REQUEST_TIMEOUT = 0.6

SCHEMA = pa.schema(
    [
        ("prediction_id", pa.string()),
        ("logged_at", pa.timestamp("us", tz="UTC")),
        ("request_time", pa.timestamp("us", tz="UTC")),
        # The server's clock when the request came (request_time is the client's as_of):
        # absent from entries logged before it existed, and from their files.
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("version", pa.string()),
        ("partition", pa.string()),
        ("shadow", pa.bool_()),
        ("prediction", pa.float64()),
        ("decision", pa.bool_()),
        ("latency_ms", pa.float64()),
        ("entity", pa.string()),
        ("request", pa.string()),
        ("features", pa.string()),
        ("missing", pa.list_(pa.string())),
        ("stale", pa.list_(pa.string())),
        ("stream_id", pa.string()),
    ]
)


class PredictionLog:
    """Appends prediction entries to the Redis Stream (sampled)."""

    def __init__(self, settings: Settings, client: redis.Redis[bytes] | None = None) -> None:
        self.settings = settings
        self.stream = settings.predictions.stream
        self.timeout_s = min(
            WRITE_TIMEOUT_S, WRITE_SHARE_OF_REQUEST_TIMEOUT * settings.serving.timeout_s
        )
        self.client = client or redis.Redis.from_url(
            redis_url(settings), socket_timeout=self.timeout_s, socket_connect_timeout=2
        )

    def sampled(self) -> bool:
        rate = self.settings.predictions.sample_rate
        return rate >= 1 or random.random() < rate

    def append(self, entries: Sequence[dict[str, Any]]) -> list[bytes]:
        """XADD every entry in one round trip; returns their stream ids."""
        if not entries:
            return []
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            # orjson: a tenth of json.dumps' time on the request path; times as ISO 8601 and
            # NaN as null, which the drain's json.loads reads back.
            pipe.xadd(self.stream, {FIELD: _encode(entry)})
        try:
            return list(pipe.execute())
        except redis.RedisError as exc:
            # Whatever the failure, it is a 503 that says why: nothing unlogged is answered.
            raise _not_logged(self.settings, exc, self.timeout_s) from exc


def _not_logged(settings: Settings, exc: redis.RedisError, timeout_s: float) -> StoreUnavailable:
    where = f"Redis at {redact(redis_url(settings))}"
    unanswered = "so the predictions were not answered"
    if isinstance(exc, redis.TimeoutError):  # e.g. CLIENT PAUSE, a stalled disk, a full host
        return StoreUnavailable(
            f"{where} did not confirm the prediction log write within {timeout_s:g} s "
            f"({exc}), {unanswered}.",
            "Check that Redis is not paused or stalled (`maquette redis status`, its log); "
            "retry the request.",
        )
    if isinstance(exc, redis.ResponseError):  # e.g. OOM past maxmemory, MISCONF, READONLY
        remedy = "Fix what Redis reports (its log says more), then retry the request."
        if "maxmemory" in str(exc):  # OOM: Redis is full and refuses every write
            remedy = (
                "Redis is full: drain the prediction log (`maquette predictions drain`), free "
                "memory in Redis or raise its maxmemory, then retry the request."
            )
        elif "MISCONF" in str(exc):  # RDB/AOF writes failing: Redis refuses writes
            remedy = (
                "Redis cannot write its data to disk: free disk space or fix its data folder "
                "(its log says why), then retry the request."
            )
        return StoreUnavailable(
            f"{where} refused the prediction log write ({exc}), {unanswered}.", remedy
        )
    return StoreUnavailable(
        f"cannot write the prediction log to {where} ({exc}), {unanswered}.",
        "Start Redis (`maquette redis start`); the service retries by itself.",
    )


def _encode(entry: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(entry, default=str)
    except TypeError:  # e.g. an integer past 64 bits in a request field: json.dumps takes it
        return json.dumps(entry, default=str).encode()


@dataclass
class DrainResult:
    """What one drain pass moved."""

    entries: int = 0  # predictions moved (a request's entry holds several)
    files: list[Path] = field(default_factory=list)
    redelivered: int = 0
    busy: str | None = None  # why nothing was moved: another drain held the lock too long


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file of this write's own (O_EXCL, in the target folder so the rename is
    # atomic): no other writer can truncate it, and a kill leaves only a *.tmp no reader globs.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as sink:
            pq.write_table(table, sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# Model name of entries the drain cannot read (not JSON, not an object): kept, never dropped.
UNREADABLE = "_unreadable"


def _time(value: Any) -> datetime | None:
    """A logged time, or None when the entry holds none or something that is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _entry(stream_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    raw = fields.get(FIELD, b"")
    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        # One bad entry must not stop every later drain: it is kept under a model of its own.
        return _unreadable(stream_id, raw)
    return {str(k): v for k, v in entry.items()}


def _unreadable(stream_id: bytes, raw: bytes) -> dict[str, Any]:
    return {
        "prediction_id": stream_id.decode(),
        "model": UNREADABLE,
        "request": raw.decode(errors="replace"),
    }


# The fields of a request's entry that hold one value per prediction (the rest are shared),
# and those that hold one such column per name.
PER_PREDICTION = ("prediction_id", "partition", "prediction", "decision", "missing", "stale")
PER_PREDICTION_BY_NAME = ("entity", "request", "features")


def expand(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per prediction of a logged entry: a request's entry (its `prediction_id` a
    list) gives one per prediction, each with the shared fields; a single prediction's entry
    (the layout before per-request entries) is returned as it is. ValueError when a column's
    length differs from the number of predictions."""
    ids = entry.get("prediction_id")
    if not isinstance(ids, list):
        return [entry]
    count = len(ids)
    shared = {k: v for k, v in entry.items() if k not in PER_PREDICTION + PER_PREDICTION_BY_NAME}
    columns = {k: _column(entry.get(k), count, k) for k in PER_PREDICTION}
    by_name = {
        k: {name: _column(v, count, f"{k}.{name}") for name, v in _mapping(entry.get(k), k).items()}
        for k in PER_PREDICTION_BY_NAME
    }
    return [
        {
            **shared,
            **{k: v[i] for k, v in columns.items()},
            **{k: {name: v[i] for name, v in named.items()} for k, named in by_name.items()},
        }
        for i in range(count)
    ]


def _column(value: Any, count: int, name: str) -> list[Any]:
    if value is None:
        return [None] * count
    if not isinstance(value, list) or len(value) != count:
        raise ValueError(f"{name} is not a list of {count} values")
    return value


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not an object")
    return value


def predictions_in(stream_id: bytes, fields: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """The predictions of one stream entry; an entry that is not one is kept, unreadable."""
    entry = _entry(stream_id, fields)
    try:
        return expand(entry)
    except ValueError:
        return [_unreadable(stream_id, fields.get(FIELD, b""))]


def _rows(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[dict[str, Any]]:
    return [_row(i, entry) for i, fields in entries for entry in predictions_in(i, fields)]


def _row(stream_id: bytes, entry: dict[str, Any]) -> dict[str, Any]:
    entry["stream_id"] = stream_id.decode()
    for key in ("entity", "request", "features"):
        entry[key] = json.dumps(entry.get(key) or {}, default=str, sort_keys=True)
    for key in ("logged_at", "request_time", "received_at"):
        entry[key] = _time(entry.get(key))
    if entry["logged_at"] is None:  # the stream id is the time Redis took the entry
        millis = int(stream_id.split(b"-")[0])
        entry["logged_at"] = datetime.fromtimestamp(millis / 1000, UTC)
    entry["model"] = _folder_safe(str(entry.get("model") or UNREADABLE))
    return entry


def _folder_safe(model: str) -> str:
    """A model name usable as a folder name (`model=NAME`): no separators, never `..`."""
    safe = model.replace("/", "_").replace("\\", "_").replace("\0", "_")
    return safe if safe.strip(".") else UNREADABLE


def _write_batch(
    settings: Settings, entries: list[tuple[bytes, dict[bytes, bytes]]]
) -> tuple[list[Path], int]:
    """Parquet files for a batch, one per (date, model), and the predictions in them; names
    come from the batch's stream ids."""
    rows = _rows(entries)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        day = row["logged_at"].astimezone(UTC).strftime("%Y-%m-%d")
        groups.setdefault((day, row["model"]), []).append(row)
    folder = settings.path(settings.predictions.folder)
    written = []
    first, last = rows[0]["stream_id"], rows[-1]["stream_id"]
    for (day, model), group in sorted(groups.items()):
        table = pa.Table.from_pylist(group, schema=SCHEMA)
        path = folder / f"date={day}" / f"model={model}" / f"part-{first}-{last}.parquet"
        _write_durably(table, path)
        written.append(path)
    return written, len(rows)


def ensure_group(client: redis.Redis[bytes], stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def drain_lock_path(settings: Settings) -> Path:
    """The lock file every drain of this project holds while it runs."""
    return lock_path(settings, "prediction-log-drain")


def _drain_lock(settings: Settings, wait_s: float) -> contextlib.AbstractContextManager[bool]:
    """Holds the drain lock (True), or yields False if another drain kept it past `wait_s`."""
    return exclusive(drain_lock_path(settings), wait_s)


# Entries read per XREADGROUP when Redis does not say how large they are (MEMORY USAGE).
FIRST_READ = 64


def _first_count(client: redis.Redis[bytes], stream: str, batch: int, max_bytes: int) -> int:
    """Entries per read before any is seen: about max_bytes of them, by the stream's average
    size (the same estimate after a crash, so a redelivered batch mostly keeps its file name)."""
    try:
        length = int(client.xlen(stream))
        used = client.memory_usage(stream, samples=0) if length else None
    except redis.ResponseError:  # MEMORY disabled: probe with a few entries first
        return min(batch, FIRST_READ)
    if not length or not used:
        return batch
    return max(1, min(batch, max_bytes * length // int(used)))


def drain(
    settings: Settings, consumer: str = "drain-1", max_batches: int | None = None
) -> DrainResult:
    """Move logged predictions into Parquet; acknowledge only what is durably written.

    One drain at a time per project: another one waits up to `drain_lock_wait_s` for the lock,
    then moves what is left, or moves nothing and says why in `busy`.
    """
    conf = settings.predictions
    with _drain_lock(settings, conf.drain_lock_wait_s) as held:
        if not held:
            return DrainResult(
                busy=f"another drain held {drain_lock_path(settings)} for more than "
                f"{conf.drain_lock_wait_s:g} s; it moves the entries, this drain moved none"
            )
        try:
            return _drain_locked(settings, consumer, max_batches)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                f"cannot drain predictions from Redis at {redact(redis_url(settings))}: {exc}",
                "Start Redis (`maquette redis start`) and run the drain again.",
            ) from exc


def _drain_locked(settings: Settings, consumer: str, max_batches: int | None) -> DrainResult:
    client = redis.Redis.from_url(redis_url(settings), socket_timeout=30)
    stream, batch = settings.predictions.stream, settings.predictions.drain_batch
    result = DrainResult()
    ensure_group(client, stream)
    max_bytes = settings.predictions.drain_max_bytes
    count = _first_count(client, stream, batch, max_bytes)
    # First what this consumer read but never acknowledged (a crash mid-way), then new entries.
    for start, redelivery in (("0", True), (">", False)):
        batches = 0
        while max_batches is None or batches < max_batches:
            reply = client.xreadgroup(GROUP, consumer, {stream: start}, count=count)
            read = reply[0][1] if reply else []
            if not read:
                break
            # Entries deleted while pending come back without fields: acknowledged, not written.
            entries = [e for e in read if e[1]]
            size = sum(len(v) for _, fields in entries for v in fields.values())
            moved = 0
            if entries:
                files, moved = _write_batch(settings, entries)
                result.files += files
                # Written and fsynced, not yet acknowledged: tests/e2e/test_durability.py kills here.
                crash_point("drain.written")
            ids = [e[0] for e in read]
            pipe = client.pipeline(transaction=True)
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
            pipe.execute()
            result.entries += moved
            result.redelivered += moved if redelivery else 0
            batches += 1
            if entries:  # the next read holds about drain_max_bytes of entries this size
                per_entry = max(1, size // len(entries))
                count = max(1, min(batch, max_bytes // per_entry))
    return result


def pending(settings: Settings) -> int:
    """Entries in the stream not yet drained (one per request: XLEN, not a read of them)."""
    client = redis.Redis.from_url(redis_url(settings), socket_timeout=5)
    return int(client.xlen(settings.predictions.stream))


def any_drained(settings: Settings) -> bool:
    """Whether any logged prediction has been drained into Parquet yet."""
    folder = settings.path(settings.predictions.folder)
    return any(folder.glob("date=*/model=*/*.parquet"))


def logged_sql(settings: Settings, model: str | None = None) -> str:
    """DuckDB SELECT of the drained predictions, one row per prediction id (copies removed)."""
    folder = settings.path(settings.predictions.folder)
    if not any_drained(settings):
        raise DataNotLoaded(
            f"no drained predictions under {folder}.",
            "Serve some predictions, then run `maquette predictions drain`.",
        )
    # The folder names (date=, model=) are for people and pruning; the columns are in the files.
    files = (
        f"{folder}/date=*/model={model}/*.parquet"
        if model
        else f"{folder}/date=*/model=*/*.parquet"
    )
    where = f"WHERE model = {sql_literal(model)}" if model else ""
    # union_by_name: files drained before a column existed (received_at) read it as null.
    source = (
        f"read_parquet({sql_literal(files)}, hive_partitioning = false, filename = true, "
        "union_by_name = true)"
    )
    # De-duplicate on the narrow key columns, then keep the matching wide rows (no wide sort).
    # A redelivered copy has the same stream id in another file: one file per prediction wins.
    return f"""
        SELECT f.* EXCLUDE (filename) FROM {source} f
        SEMI JOIN (
            SELECT prediction_id, min(stream_id) AS stream_id,
                   arg_min(filename, stream_id) AS filename
            FROM {source} {where} GROUP BY prediction_id
        ) first USING (prediction_id, stream_id, filename)
        {where.replace("WHERE model", "WHERE f.model")}"""


def read_predictions(settings: Settings, model: str | None = None) -> pa.Table:
    """Drained predictions, one row per prediction id (redelivered copies removed)."""
    sql = logged_sql(settings, model)
    con = duckdb_connection()
    return con.sql(f"SELECT * FROM ({sql}) ORDER BY stream_id").to_arrow_table()
