"""Events on the Redis Stream: parsing an entry, publishing events, the stream's Redis client.

An event is one stream entry whose fields are strings (any Redis client can publish one); the
project's `StreamDefinition` says which fields it carries, which are required and how keys are
typed (an int64 key published as "7" is the integer 7). `publish_lines` publishes JSON lines
(`maquette stream publish`), checking each against the definition first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from maquette.config import Settings
from maquette.data.redis_server import unreachable
from maquette.errors import DataError, StoreUnavailable
from maquette.features.redis_cluster import shared_client
from maquette.stream.aggregations import StreamDefinition, int_key, stream_definition
from maquette.stream.reconnect import REDIS_DOWN

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_INT64 = range(-(2**63), 2**63)
# The largest value an event may carry: past it a window's sum loses integers (and math.fsum
# of a few values near 1e308 overflows, failing every later poll of the same entries).
MAX_ABS_VALUE = float(2**53)


@dataclass(frozen=True, slots=True)
class Event:
    """A valid event: its time (µs since the epoch), keys and values."""

    time_us: int
    keys: dict[str, str | int]  # int for int64 keys
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
        texts = {name: fields[name.encode()].decode() for name in definition.keys}
        raw_time = fields[event_time.encode()].decode()
    except UnicodeDecodeError:
        return "malformed: a key or the time is not UTF-8 text"
    keys: dict[str, str | int] = {}
    for name, kind in definition.key_types.items():
        text = texts[name]
        if kind == "int64":
            number = int_key(text)
            if number is None:
                return f"malformed: {name} {text[:40]!r} is not an integer"
            keys[name] = number
            if number not in _INT64:
                return f"malformed: {name} {text[:40]!r} is outside the int64 range"
        else:
            keys[name] = text
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
        if abs(value) > MAX_ABS_VALUE:
            return f"malformed: {name} {value:g} is beyond ±2^53, which sums cannot keep exactly"
        values[name] = value
    return Event(epoch_us(when), keys, values)


def _encode(event: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in event.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            out[name] = value.isoformat()
        elif isinstance(value, bool):  # as JSON writes it, not Python's True
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
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
    except REDIS_DOWN as exc:
        raise stream_unavailable(settings, exc) from exc


@dataclass
class PublishedLines:
    """What `publish_lines` did: events published, and each rejected line with its reason."""

    published: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)

    def raise_for_rejected(self, shown: int = 10) -> None:
        """An error listing the rejected lines (the first `shown`), if any were."""
        if not self.rejected:
            return
        listed = "".join(f"\n  line {n}: {reason}" for n, reason in self.rejected[:shown])
        more = len(self.rejected) - shown
        count = len(self.rejected)
        # Events that do not match stream.events: data not matching what maquette.yaml declares.
        raise DataError(
            f"{count:,} {'line is not an event' if count == 1 else 'lines are not events'} of "
            f"this stream and {'was' if count == 1 else 'were'} not published:{listed}"
            + (f"\n  ... and {more:,} more" if more > 0 else ""),
            f"Fix those lines and publish them again ({self.published:,} other events were "
            "published): one JSON object per line, with the fields stream.events declares.",
        )


def publish_lines(
    settings: Settings,
    lines: Iterable[str],
    client: redis.Redis[bytes] | None = None,
    batch: int = 1_000,
) -> PublishedLines:
    """Publish JSON lines, one event object per line; a line that is not a valid event is
    reported with its number and reason, and the others are published."""
    definition = stream_definition(settings)
    client = client or stream_client(settings)
    result = PublishedLines()
    pending: list[dict[str, str]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        event = _line_event(line, definition)
        if isinstance(event, str):
            result.rejected.append((number, event))
            continue
        pending.append(event)
        if len(pending) >= batch:
            result.published += len(publish(settings, pending, client))
            pending.clear()
    result.published += len(publish(settings, pending, client)) if pending else 0
    return result


def _line_event(line: str, definition: StreamDefinition) -> dict[str, str] | str:
    """The stream fields of one JSON line, or why it is not an event of this stream."""
    try:
        found = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(found, dict):
        return f"a JSON {type(found).__name__}, not an object of event fields"
    if nested := [k for k, v in found.items() if isinstance(v, dict | list)]:
        return f"{', '.join(nested)}: a list or object; an event field is text, a number or a time"
    fields = _encode(found)
    checked = parse_event({k.encode(): v.encode() for k, v in fields.items()}, definition)
    return checked.removeprefix("malformed: ") if isinstance(checked, str) else fields


def stream_client(settings: Settings) -> redis.Redis[bytes]:
    """A client of the Redis (or Redis Cluster) holding the stream, with timeouts suited to a
    long-running reader."""
    return shared_client(settings, 30.0)


def stream_unavailable(settings: Settings, exc: Exception) -> StoreUnavailable:
    """The error to raise when the stream's Redis does not answer."""
    return unreachable(settings, exc)


def trim_acknowledged(client: redis.Redis[bytes], stream: str) -> int:
    """Remove the entries of `stream` that every consumer group has acknowledged: those before
    the oldest one a group still holds pending, or has not been delivered yet. Never an entry
    a group may still read (a MAXLEN would drop those). Returns the entries removed."""
    groups: list[dict[str, Any]] = client.xinfo_groups(stream)  # type: ignore[no-untyped-call]
    if not groups:
        return 0
    needed = []
    for group in groups:
        ms, seq = _stream_id(group["last-delivered-id"])
        after = (ms, seq + 1)  # everything delivered acknowledged: keep what comes after it
        if int(group["pending"]):
            summary: dict[str, Any] = client.xpending(stream, group["name"])  # type: ignore[no-untyped-call]
            # None when the last pending entry was acknowledged since XINFO was read.
            oldest = summary.get("min")
            needed.append(_stream_id(oldest) if oldest is not None else after)
        else:
            needed.append(after)
    ms, seq = min(needed)
    return int(client.xtrim(stream, minid=f"{ms}-{seq}", approximate=False))


def _stream_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
