"""The prediction log: every served prediction, durable from before the response to Parquet.

The service appends each prediction to a Redis Stream (the embedded Redis keeps an append-only
file) before it answers. `drain` moves entries into Parquet under the offline store,
partitioned by date and model, through a consumer group, and acknowledges (then deletes) them
only after the file is written and fsynced. Delivery is at least once: entries of a batch that
was written but not acknowledged come back after a crash and are rewritten to the same file
name (derived from their stream ids), and readers de-duplicate by prediction id, so nothing is
lost or counted twice.
"""

from __future__ import annotations

import json
import os
import random
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
from maquette.data.sql import duckdb_connection
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
    where = f"Redis at {redis_url(settings)}"
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
            remedy = "Free memory in Redis or raise its maxmemory, then retry the request."
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

    entries: int = 0
    files: list[Path] = field(default_factory=list)
    redelivered: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as sink:
        pq.write_table(table, sink)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _rows(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[dict[str, Any]]:
    rows = []
    for stream_id, fields in entries:
        entry = json.loads(fields[FIELD])
        entry["stream_id"] = stream_id.decode()
        for key in ("entity", "request", "features"):
            entry[key] = json.dumps(entry.get(key) or {}, default=str, sort_keys=True)
        for key in ("logged_at", "request_time"):
            entry[key] = datetime.fromisoformat(entry[key]) if entry.get(key) else None
        rows.append(entry)
    return rows


def _write_batch(settings: Settings, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Path]:
    """Parquet files for a batch, one per (date, model); names come from the batch's stream ids."""
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
    return written


def ensure_group(client: redis.Redis[bytes], stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def drain(
    settings: Settings, consumer: str = "drain-1", max_batches: int | None = None
) -> DrainResult:
    """Move logged predictions into Parquet; acknowledge only what is durably written."""
    client = redis.Redis.from_url(redis_url(settings), socket_timeout=30)
    stream, batch = settings.predictions.stream, settings.predictions.drain_batch
    result = DrainResult()
    try:
        ensure_group(client, stream)
        # First what this consumer read but never acknowledged (a crash mid-way), then new entries.
        for start, redelivery in (("0", True), (">", False)):
            batches = 0
            while max_batches is None or batches < max_batches:
                reply = client.xreadgroup(GROUP, consumer, {stream: start}, count=batch)
                entries = [e for e in (reply[0][1] if reply else []) if e[1]]
                if not entries:
                    break
                result.files += _write_batch(settings, entries)
                # Written and fsynced, not yet acknowledged: tests/e2e/test_durability.py kills here.
                crash_point("drain.written")
                ids = [e[0] for e in entries]
                pipe = client.pipeline(transaction=True)
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
                pipe.execute()
                result.entries += len(entries)
                result.redelivered += len(entries) if redelivery else 0
                batches += 1
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(
            f"cannot drain predictions from Redis at {redis_url(settings)}: {exc}",
            "Start Redis (`maquette redis start`) and run the drain again.",
        ) from exc
    return result


def pending(settings: Settings) -> int:
    """Entries in the stream not yet drained."""
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
    where = "WHERE model = '" + model.replace("'", "''") + "'" if model else ""
    source = f"read_parquet('{files}', hive_partitioning = false, filename = true)"
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
