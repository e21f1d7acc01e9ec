"""Operating the speed layer: where it stands, what it rejected, and forgetting it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from maquette.config import Settings
from maquette.stream.events import stream_client, stream_unavailable
from maquette.stream.reconnect import REDIS_DOWN
from maquette.stream.windows import state_key, stats_key


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
    conf = settings.stream
    try:
        client = stream_client(settings)
        length = int(client.xlen(conf.stream))
        # types-redis leaves xinfo_groups unannotated.
        groups = client.xinfo_groups(conf.stream) if length or client.exists(conf.stream) else []  # type: ignore[no-untyped-call]
        group = next((g for g in groups if g["name"].decode() == conf.group), None)
        stats = {k.decode(): v.decode() for k, v in client.hgetall(stats_key(settings)).items()}
        dead = int(client.xlen(conf.dead_letter))
    except REDIS_DOWN as exc:
        raise stream_unavailable(settings, exc) from exc
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


def wait_until_committed(settings: Settings, timeout_s: float) -> bool:
    """Wait (up to timeout_s) until the processor has read every event on the stream and
    committed it: its offline rows written, its entries acknowledged. False when time ran out.
    The online rows come first (as soon as a batch is read); readers of the offline store, a
    monitoring pass comparing served features with offline ones, need this too."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = status(settings)
        if now.pending == 0 and not now.undelivered:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def dead_letters(settings: Settings, count: int = 20) -> list[dict[str, str]]:
    """The newest rejected events, each with its reason and source id."""
    try:
        entries = stream_client(settings).xrevrange(settings.stream.dead_letter, count=count)
    except REDIS_DOWN as exc:
        raise stream_unavailable(settings, exc) from exc
    return [
        {"id": i.decode(), **{k.decode(): v.decode(errors="replace") for k, v in f.items()}}
        for i, f in entries
    ]


def reset(settings: Settings) -> None:
    """Forget the stream: events, consumer group, window state, counters and dead letters.

    Feature values already pushed stay in Feast's stores.
    """
    conf = settings.stream
    try:
        stream_client(settings).delete(
            conf.stream, conf.dead_letter, state_key(settings), stats_key(settings)
        )
    except REDIS_DOWN as exc:
        raise stream_unavailable(settings, exc) from exc
