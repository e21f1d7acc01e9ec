"""What one prediction log entry holds, and how the drain reads it back as rows.

The service writes one entry per request and version (`encode`): its per-prediction fields as
columns, the rest shared. `predictions_in` gives one dict per prediction (an entry of one
prediction as plain values, as logged before, reads back the same); `rows` adds the stream id
and the typed times the Parquet files hold (`SCHEMA`). An entry that is not JSON, or whose
columns disagree, is kept whole under the model `_unreadable`, never dropped.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

# The stream entry's one field: the JSON of the request's predictions.
FIELD = b"p"

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


def encode(entry: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(entry, default=str)
    except TypeError:  # e.g. an integer past 64 bits in a request field: json.dumps takes it
        return json.dumps(entry, default=str).encode()


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


def rows(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[dict[str, Any]]:
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
