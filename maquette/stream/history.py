"""Historical events: the SQL that selects them from the offline store, and their replay.

`replay` publishes past events to the stream in event-time order on an accelerated clock, so the
processor sees history arrive as live traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from maquette.config import Settings
from maquette.data.sources import require_loaded
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.data.sql import sql_identifier as _q
from maquette.errors import DataNotLoaded
from maquette.stream.aggregations import int_key_sql, stream_definition
from maquette.stream.events import epoch_us, publish, stream_client


def events_sql(
    settings: Settings, start: datetime | None = None, end: datetime | None = None
) -> str:
    """The valid historical events in [start, end), in event-time order (DuckDB SQL)."""
    definition = stream_definition(settings)
    source = settings.stream.events_source
    if source is None:
        raise DataNotLoaded(
            "stream.events_source is not set, so there are no historical events.",
            "Set stream.events_source in maquette.yaml to a table holding the events.",
        )
    path = require_loaded(settings, source)
    key_types = definition.key_types
    # int64 keys come out as integers whatever the column holds, so replay publishes "7".
    fields = ", ".join(
        f"{int_key_sql(_q(f))} AS {_q(f)}" if key_types.get(f) == "int64" else _q(f)
        for f in definition.fields
    )
    event_time = _q(definition.event_time)
    valid = [
        f"{int_key_sql(_q(k))} IS NOT NULL"
        if kind == "int64"
        else f"{_q(k)} IS NOT NULL AND {_q(k)}::VARCHAR <> ''"
        for k, kind in key_types.items()
    ]
    valid += [f"isfinite({_q(v)}::DOUBLE)" for v in definition.values]
    valid.append(f"{event_time} IS NOT NULL")
    if start is not None:
        valid.append(f"{event_time} >= {sql_literal(start.isoformat())}::TIMESTAMPTZ")
    if end is not None:
        valid.append(f"{event_time} < {sql_literal(end.isoformat())}::TIMESTAMPTZ")
    order = ", ".join(_q(c) for c in (definition.event_time, *definition.tie_break))
    return (
        f"SELECT {fields} FROM read_parquet({sql_literal(path)}) WHERE {' AND '.join(valid)} "
        f"ORDER BY {order}"
    )


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
    """Publish historical events in event-time order on an accelerated clock.

    `speed` compresses event time (600: an hour of events in 6 s; None: as fast as
    possible); `rate` instead paces a fixed number of events per second.
    """
    event_time = stream_definition(settings).event_time
    sql = events_sql(settings, start, end) + (f" LIMIT {int(limit)}" if limit else "")
    reader = duckdb_connection(quiet=True).sql(sql).to_arrow_reader(5_000)
    client = stream_client(settings)
    result = ReplayResult()
    began: float | None = None
    first_us = 0
    pending: list[dict[str, Any]] = []
    for batch in reader:
        for event in batch.to_pylist():
            when = event[event_time]
            if began is None:  # the clock starts with the first event
                began, first_us = time.monotonic(), epoch_us(when)
            if rate:
                due = result.events / rate
            elif speed:
                due = (epoch_us(when) - first_us) / 1e6 / speed
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
