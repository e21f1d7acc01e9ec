"""The processor's window state: loaded from Redis, built from history, repaired.

The state is one Redis hash (`windows.state_key`): a field per (view, key) window and the
newest event time seen. A fresh processor (no hash) starts with the last window of history the
backfill ends with, so the first streamed rows continue the batch layer's.
"""

from __future__ import annotations

import logging

import redis

from maquette.config import Settings
from maquette.data.sql import duckdb_connection
from maquette.errors import DataNotLoaded
from maquette.stream.aggregations import StreamDefinition
from maquette.stream.events import epoch_us, iso_time
from maquette.stream.history import events_sql
from maquette.stream.windows import MAX_TIME_FIELD, Window, state_key

log = logging.getLogger("maquette.stream")

# A key as its aggregation types it (int for int64 keys), and a window's slot: (view, key).
Key = str | int
Slot = tuple[str, Key]
Windows = dict[Slot, Window]


def load_windows(
    settings: Settings, client: redis.Redis[bytes], definition: StreamDefinition
) -> tuple[Windows, int] | None:
    """The committed windows and newest event time; None when nothing was committed yet."""
    stored: dict[bytes, bytes] = client.hgetall(state_key(settings))
    if MAX_TIME_FIELD not in stored:
        return None
    max_time = int(stored.pop(MAX_TIME_FIELD))
    aggs = {a.view: a for a in definition.aggregations}
    windows: Windows = {}
    for name, raw in stored.items():
        view, _, key = name.decode().partition(":")
        # The field holds the key as text; its aggregation gives it back its type.
        slot = (view, aggs[view].key_of(key) if view in aggs else key)
        windows[slot] = Window.loads(raw)
    return windows, max_time


def drop_events_after(windows: Windows, horizon: int) -> tuple[int, set[Slot], int | None]:
    """Repair a state poisoned before events ahead of the clock were refused: drop the events
    after `horizon` from the windows (in place). Returns how many, the windows changed, and the
    newest event time left (the new watermark's base)."""
    dropped, dirty = 0, set()
    before = max((w.times[-1] for w in windows.values() if w.times), default=None)
    for slot, window in list(windows.items()):
        if gone := window.drop_after(horizon):
            dropped += gone
            dirty.add(slot)
            if not window.times:
                del windows[slot]
    newest = max((w.times[-1] for w in windows.values() if w.times), default=None)
    log.warning(
        "stream state: newest event time %s is ahead of the clock; %d event(s) ahead of it "
        "dropped from the windows",
        iso_time(before or 0),
        dropped,
    )
    return dropped, dirty, newest


def warm_start_windows(
    settings: Settings, definition: StreamDefinition
) -> tuple[Windows, int | None, set[Slot]]:
    """A fresh processor's windows: the last window of history the backfill ends with."""
    conf = settings.stream
    windows: Windows = {}
    max_time: int | None = None
    before = conf.backfill_before
    if before is None or conf.events_source is None:
        return windows, max_time, set()
    horizon = before - definition.longest_window
    try:
        sql = events_sql(settings, horizon, before)
    except DataNotLoaded:
        return windows, max_time, set()
    for event in duckdb_connection(quiet=True).sql(sql).to_arrow_table().to_pylist():
        time_us = epoch_us(event[definition.event_time])
        for agg in definition.aggregations:
            slot = (agg.view, agg.key_of(event[agg.key]))
            windows.setdefault(slot, Window()).add(time_us, float(event[agg.value]))
        max_time = time_us if max_time is None else max(max_time, time_us)
    return windows, max_time, set(windows)
