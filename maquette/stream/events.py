"""Events on the Redis Stream: parsing an entry, publishing events, the stream's Redis client.

An event is one stream entry whose fields are strings (any Redis client can publish one); the
project's `StreamDefinition` says which fields it carries and which are required.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from maquette.config import Settings
from maquette.data.redis_server import redis_url
from maquette.errors import StoreUnavailable
from maquette.stream.aggregations import StreamDefinition

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Event:
    """A valid event: its time (µs since the epoch), keys and values."""

    time_us: int
    keys: dict[str, str]
    values: dict[str, float]


def epoch_us(when: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    return (when - _EPOCH) // _US


def iso_time(time_us: int) -> str:
    """ISO 8601 (UTC) of a time in microseconds since the epoch."""
    return (_EPOCH + time_us * _US).isoformat()


def parse_event(fields: Mapping[bytes, bytes], definition: StreamDefinition) -> Event | str:
    """The event held by a stream entry, or the reason it is malformed."""
    missing = [n for n in definition.required_fields if not fields.get(n.encode())]
    if missing:
        return f"malformed: missing {', '.join(missing)}"
    event_time = definition.event_time
    try:
        keys = {name: fields[name.encode()].decode() for name in definition.keys}
        raw_time = fields[event_time.encode()].decode()
    except UnicodeDecodeError:
        return "malformed: a key or the time is not UTF-8 text"
    try:
        when = datetime.fromisoformat(raw_time)
    except ValueError:
        return f"malformed: {event_time} {raw_time!r} is not an ISO 8601 time"
    if when.tzinfo is None:
        return f"malformed: {event_time} {raw_time!r} has no time zone"
    values = {}
    for name in definition.values:
        raw = fields[name.encode()]
        try:
            value = float(raw)
        except ValueError:
            return f"malformed: {name} {raw[:40].decode(errors='replace')!r} is not a number"
        if not math.isfinite(value):
            return f"malformed: {name} is {value}"
        values[name] = value
    return Event(epoch_us(when), keys, values)


def _encode(event: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in event.items():
        if value is None:
            continue
        out[name] = value.isoformat() if isinstance(value, datetime) else str(value)
    return out


def publish(
    settings: Settings,
    events: Iterable[Mapping[str, Any]],
    client: redis.Redis[bytes] | None = None,
) -> list[str]:
    """XADD events (dicts of the stream definition's fields) in one round trip; their ids."""
    client = client or stream_client(settings)
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(
            settings.stream.stream,
            _encode(event),
            maxlen=settings.stream.max_len,
            approximate=True,
        )
    try:
        return [i.decode() for i in pipe.execute()]
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise stream_unavailable(settings, exc) from exc


def stream_client(settings: Settings) -> redis.Redis[bytes]:
    """A client of the Redis holding the stream, with timeouts suited to a long-running reader."""
    return redis.Redis.from_url(redis_url(settings), socket_timeout=30, socket_connect_timeout=5)


def stream_unavailable(settings: Settings, exc: Exception) -> StoreUnavailable:
    """The error to raise when the stream's Redis does not answer."""
    return StoreUnavailable(
        f"Redis at {redis_url(settings)} is unreachable: {exc}",
        "Start it with `maquette redis start` or fix MAQUETTE_REDIS_URL.",
    )
