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

Sharded (`predictions.shards` > 1), the log is that many streams, named so their hash slots
spread evenly over a Redis Cluster's (each master takes a share of the writes); each request's
entry goes to one of them in turn, and each shard is drained by a consumer and lock of its own,
all at once, into files named after the shard. On a cluster (`redis.cluster`) the streams live
there; else in the one Redis.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis
from redis.crc import key_slot

from maquette.config import Settings
from maquette.data.shared_files import exclusive, lock_path
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.errors import ConfigError, DataNotLoaded, StoreUnavailable
from maquette.faults import crash_point
from maquette.features.redis_cluster import CLUSTER_DOWN, SLOTS, shared_client, shared_store

# UNREADABLE, expand and predictions_in: callers of the log find them here, as they always did.
from maquette.serving.log_entries import FIELD, SCHEMA, encode
from maquette.serving.log_entries import UNREADABLE as UNREADABLE
from maquette.serving.log_entries import expand as expand
from maquette.serving.log_entries import predictions_in as predictions_in
from maquette.serving.log_entries import rows as rows_of

GROUP = "drain"
# How long a request waits for Redis to confirm its log entries before it gets a 503 saying
# why: at most 5 s, and well within serving.timeout_s (3 s of the default 5 s). At 5 s BentoML's
# bare 504 ("Not able to process the request in 5.0 seconds") answered first on its API path.
WRITE_TIMEOUT_S = 5.0
WRITE_SHARE_OF_REQUEST_TIMEOUT = 0.6


def shard_streams(settings: Settings) -> list[str]:
    """The streams the log is written to: `predictions.stream` alone, or one per shard. Shard
    i is `<stream>:<i>` (or `<stream>:<i>-<j>`, the first j whose hash slot falls in the i-th
    of `shards` equal slot ranges), so a cluster's masters, which hold equal ranges, each take
    a share. The same names on one Redis: a project moves to a cluster unchanged. (A hash tag
    in the name would put every shard in one slot: the settings refuse it.)"""
    stream, shards = settings.predictions.stream, settings.predictions.shards
    if shards == 1:
        return [stream]
    names = []
    for i in range(shards):
        low, high = i * SLOTS // shards, (i + 1) * SLOTS // shards
        for j in range(SLOTS * 64):  # ~shards tries on average; bounded all the same
            name = f"{stream}:{i}" if j == 0 else f"{stream}:{i}-{j}"
            if low <= key_slot(name.encode()) < high:
                names.append(name)
                break
        else:
            raise ConfigError(
                f"no name for shard {i} of {stream!r} hashes into its slot range.",
                "Choose a predictions.stream without a hash tag ({...}).",
            )
    return names


def shards_key(settings: Settings) -> str:
    """The Redis set of every stream the log was ever written to: a drain empties them all,
    so changing predictions.shards strands nothing."""
    return f"{settings.predictions.stream}:shards"


def drained_streams(settings: Settings, client: redis.Redis[bytes]) -> list[str]:
    """The streams a drain empties: today's shards, those any earlier `shards` wrote to, and
    the unsharded stream (entries logged before the log was sharded)."""
    names = shard_streams(settings)
    if len(names) > 1:  # today's shards, for a drain under other settings after this one
        client.sadd(shards_key(settings), *names)
    written = sorted(m.decode() for m in client.smembers(shards_key(settings)))
    return list(dict.fromkeys([*names, *written, settings.predictions.stream]))


class PredictionLog:
    """Appends prediction entries to the Redis Stream (sampled); sharded, each call to the
    next shard in turn."""

    def __init__(self, settings: Settings, client: redis.Redis[bytes] | None = None) -> None:
        self.settings = settings
        self.streams = shard_streams(settings)
        self.stream = self.streams[0]
        self._turn = itertools.count()  # next() is atomic: request threads share it
        self.timeout_s = min(
            WRITE_TIMEOUT_S, WRITE_SHARE_OF_REQUEST_TIMEOUT * settings.serving.timeout_s
        )
        self._client = client  # made on first use: a cluster client connects when made
        self._announced = len(self.streams) == 1  # the shards are in shards_key once written

    @property
    def client(self) -> redis.Redis[bytes]:
        if self._client is None:
            self._client = shared_client(self.settings, self.timeout_s)
        return self._client

    def sampled(self) -> bool:
        rate = self.settings.predictions.sample_rate
        return rate >= 1 or random.random() < rate

    def append(self, entries: Sequence[dict[str, Any]]) -> list[bytes]:
        """XADD every entry in one round trip; returns their stream ids."""
        if not entries:
            return []
        stream = self.streams[next(self._turn) % len(self.streams)]
        try:
            pipe = self.client.pipeline(transaction=False)
        except StoreUnavailable as exc:  # the cluster did not answer when its client was made
            raise _not_logged(self.settings, exc, self.timeout_s) from exc
        for entry in entries:
            # orjson: a tenth of json.dumps' time on the request path; times as ISO 8601 and
            # NaN as null, which the drain's json.loads reads back.
            pipe.xadd(stream, {FIELD: encode(entry)})
        try:
            replies = list(pipe.execute())
        except (redis.RedisError, *CLUSTER_DOWN) as exc:
            # Whatever the failure, it is a 503 that says why: nothing unlogged is answered.
            raise _not_logged(self.settings, exc, self.timeout_s) from exc
        if not self._announced:
            self._announce()
        return replies

    def _announce(self) -> None:
        """Remember this process's shards in Redis, so a drain under other settings finds
        them. Best effort: the entries are logged already, and a drain always reads the shards
        its own settings name; the next append tries again."""
        try:
            self.client.sadd(shards_key(self.settings), *self.streams)
        except (redis.RedisError, *CLUSTER_DOWN):
            return
        self._announced = True


def _not_logged(settings: Settings, exc: Exception, timeout_s: float) -> StoreUnavailable:
    where = shared_store(settings)
    unanswered = "so the predictions were not answered"
    if isinstance(exc, StoreUnavailable):
        return StoreUnavailable(f"{exc.message}; {unanswered}.", exc.remedy)
    if isinstance(exc, CLUSTER_DOWN):  # a master down and no replica took its slots over
        return StoreUnavailable(
            f"cannot write the prediction log to {where} ({exc}), {unanswered}.",
            "Check the cluster (`redis-cli cluster info` on a node): every slot needs a "
            "master; the service writes again by itself once it has one.",
        )
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
    if settings.redis.cluster:  # a node unreachable
        return StoreUnavailable(
            f"cannot write the prediction log to {where} ({exc}), {unanswered}.",
            "Check the cluster (`redis-cli cluster info` on a node): every slot needs a "
            "master; the service writes again by itself once it has one.",
        )
    return StoreUnavailable(
        f"cannot write the prediction log to {where} ({exc}), {unanswered}.",
        "Start Redis (`maquette redis start`); the service retries by itself.",
    )


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


def _write_batch(
    settings: Settings, entries: list[tuple[bytes, dict[bytes, bytes]]], shard: str = ""
) -> tuple[list[Path], int]:
    """Parquet files for a batch, one per (date, model), and the predictions in them; names
    come from the shard and the batch's stream ids (two shards' ids may be equal)."""
    rows = rows_of(entries)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        day = row["logged_at"].astimezone(UTC).strftime("%Y-%m-%d")
        groups.setdefault((day, row["model"]), []).append(row)
    folder = settings.path(settings.predictions.folder)
    written = []
    first, last = rows[0]["stream_id"], rows[-1]["stream_id"]
    for (day, model), group in sorted(groups.items()):
        table = pa.Table.from_pylist(group, schema=SCHEMA)
        name = f"part-{shard}{first}-{last}.parquet"
        path = folder / f"date={day}" / f"model={model}" / name
        _write_durably(table, path)
        written.append(path)
    return written, len(rows)


def ensure_group(client: redis.Redis[bytes], stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def drain_lock_path(settings: Settings, stream: str | None = None) -> Path:
    """The lock file a drain of this project holds while it moves `stream` (default: the
    unsharded stream); each shard has its own."""
    if stream is None or stream == settings.predictions.stream:
        return lock_path(settings, "prediction-log-drain")
    return lock_path(settings, f"prediction-log-drain-{_shard_label(settings, stream)}")


def _shard_label(settings: Settings, stream: str) -> str:
    """`s<suffix>` for a shard stream (`<stream>:<suffix>`; its files, lock and consumer carry
    it, the same whatever `shards` is now); empty for the unsharded stream."""
    if stream == settings.predictions.stream:
        return ""
    return f"s{stream[len(settings.predictions.stream) + 1 :]}"


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

    One drain at a time per stream: another one waits up to `drain_lock_wait_s` for its lock,
    then moves what is left, or moves nothing and says why in `busy`. Sharded, every shard is
    drained at once, each by its own consumer (`<consumer>-s<i>`).
    """
    try:
        streams = drained_streams(settings, shared_client(settings, 30.0))
    except REDIS_AWAY as exc:
        raise _drain_unavailable(settings, exc) from exc
    if len(streams) == 1:
        return _drain_stream(settings, streams[0], consumer, max_batches)
    with ThreadPoolExecutor(len(streams), thread_name_prefix="drain") as pool:
        parts = list(
            pool.map(
                lambda s: _drain_stream(settings, s, _consumer(settings, s, consumer), max_batches),
                streams,
            )
        )
    result = DrainResult()
    for part in parts:
        result.entries += part.entries
        result.files += part.files
        result.redelivered += part.redelivered
        result.busy = result.busy or part.busy
    return result


def _consumer(settings: Settings, stream: str, consumer: str) -> str:
    """A shard's consumer: `<consumer>-s<i>`; the unsharded stream keeps `consumer`, so what
    it read before the log was sharded is delivered to it again."""
    label = _shard_label(settings, stream)
    return f"{consumer}-{label}" if label else consumer


def _drain_stream(
    settings: Settings, stream: str, consumer: str, max_batches: int | None
) -> DrainResult:
    conf = settings.predictions
    path = drain_lock_path(settings, stream)
    with exclusive(path, conf.drain_lock_wait_s) as held:
        if not held:
            return DrainResult(
                busy=f"another drain held {path} for more than "
                f"{conf.drain_lock_wait_s:g} s; it moves the entries, this drain moved none"
            )
        try:
            return _drain_locked(settings, stream, consumer, max_batches)
        except REDIS_AWAY as exc:
            raise _drain_unavailable(settings, exc) from exc


# Redis (or the cluster) not answering: what a drain or a count turns into StoreUnavailable.
REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError, *CLUSTER_DOWN)


def _drain_unavailable(settings: Settings, exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(
        f"cannot drain predictions from {shared_store(settings)}: {exc}",
        "Start Redis (`maquette redis start`; on a cluster, every slot needs a master) and "
        "run the drain again.",
    )


def _drain_locked(
    settings: Settings, stream: str, consumer: str, max_batches: int | None
) -> DrainResult:
    client = shared_client(settings, 30.0)
    batch, shard = settings.predictions.drain_batch, _shard_label(settings, stream)
    shard = f"{shard}-" if shard else ""
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
                files, moved = _write_batch(settings, entries, shard)
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
    """Entries in the log not yet drained (one per request: XLEN, not a read of them)."""
    try:
        client = shared_client(settings, 5.0)
        return sum(int(client.xlen(s)) for s in drained_streams(settings, client))
    except REDIS_AWAY as exc:
        raise StoreUnavailable(
            f"cannot count the logged predictions in {shared_store(settings)}: {exc}",
            "Start Redis (`maquette redis start`; on a cluster, every slot needs a master).",
        ) from exc


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
