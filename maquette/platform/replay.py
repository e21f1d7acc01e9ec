"""Replay a stretch of history as if it were live: the clock moves slot by slot (an hour by
default); at each slot the online store is materialized up to the slot's start, then every
entity row of the slot is sent for prediction as of its own event time, in event-time order.

This is how the demo serves December 2013 and how the tests get served features that match
the offline store (the skew check): Redis never holds a value from the future of a request.
Feature rows are expected on slot boundaries or before (hourly weather, daily aggregates);
a feature stamped inside a slot appears from the next slot on. Feast's registry records the
materialization once, when the clock stops (see `MaterializationAlongClock`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.features.layer import FeatureLayer

# (rows of one request, request time) -> answers (anything; counted by length)
Send = Callable[[list[dict[str, Any]], datetime], list[Any]]


@dataclass
class ReplayResult:
    start: datetime
    end: datetime
    slots: int = 0
    requests: int = 0
    rows: int = 0
    failures: int = 0
    request_ms: list[float] = field(default_factory=list)
    materialize_s: float = 0.0
    seconds: float = 0.0


def entity_rows(
    settings: Settings,
    model: str,
    start: datetime,
    end: datetime,
    sample: float | None = None,
    seed: int = 7,
) -> pd.DataFrame:
    """Entity rows of `model`'s source with event time in [start, end), in time order."""
    spec = settings.model_spec(model)
    source = datasets.require_loaded(settings, settings.entity_source(spec))
    ts = spec.timestamp_column
    where = f'"{ts}" >= $start AND "{ts}" < $end'
    if spec.row_filter:
        where += f" AND ({spec.row_filter})"
    con = duckdb_connection()
    frame = con.sql(
        f'SELECT * FROM read_parquet({sql_literal(str(source))}) WHERE {where} ORDER BY "{ts}"',
        params={"start": start, "end": end},
    ).df()
    if sample is not None and sample < 1:
        frame = frame.sample(frac=sample, random_state=seed).sort_values(ts, kind="stable")
    return frame.reset_index(drop=True)


def _pushed(view: Any) -> bool:
    from feast.data_source import PushSource

    return isinstance(view.stream_source, PushSource) or isinstance(view.batch_source, PushSource)


def replay(
    settings: Settings,
    rows: pd.DataFrame,
    fields: list[str],
    send: Send,
    start: datetime,
    end: datetime,
    slot: timedelta = timedelta(hours=1),
    timestamp_column: str = "event_timestamp",
    on_slot: Callable[[datetime, datetime], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    layer: FeatureLayer | None = None,
    per_slot: bool = False,
) -> ReplayResult:
    """Walk [start, end) slot by slot: materialize to the slot start, `on_slot`, then send rows.

    Each row goes alone, as of its own time; with `per_slot`, a slot's rows go together as of
    the slot's start (predictions made up to one slot ahead). The online store ends
    materialized up to `end`; Feast's registry records each view's materialization once, from
    where it stood to where the walk stopped, rather than at every slot.
    """
    layer = layer or FeatureLayer(settings)
    # Views fed by a push source get their online values from the stream processor.
    batch_views = [v.name for v in layer.feature_views() if not _pushed(v)]
    result = ReplayResult(start, end)
    began = time.perf_counter()
    times = rows[timestamp_column]
    clock, total = start, len(rows)
    with layer.materialization_along_clock(batch_views, until=end) as online:
        while clock < end:
            upper = min(clock + slot, end)
            tick = time.perf_counter()
            online.advance(clock)
            result.materialize_s += time.perf_counter() - tick
            if on_slot:
                on_slot(clock, upper)
            batch = rows[(times >= clock) & (times < upper)]
            if per_slot:
                _send(result, send, batch[fields].to_dict("records"), clock)
            else:
                for record, when in zip(
                    batch[fields].to_dict("records"), batch[timestamp_column], strict=True
                ):
                    _send(result, send, [record], when.to_pydatetime())
            result.slots += 1
            if progress:
                progress(result.rows, total)
            clock = upper
        # The clock stops at `end`: the online store (and the registry's record) reaches it,
        # so the next incremental run starts where the replay stopped.
        tick = time.perf_counter()
        online.advance(end)
        result.materialize_s += time.perf_counter() - tick
    result.seconds = time.perf_counter() - began
    return result


def _send(result: ReplayResult, send: Send, records: list[dict[str, Any]], when: datetime) -> None:
    """One request of `records` as of `when`, timed and counted in `result` (none if empty)."""
    if not records:
        return
    tick = time.perf_counter()
    try:
        send(records, when)
    except Exception:  # counted and reported; one bad request does not stop the clock
        result.failures += 1
    result.request_ms.append((time.perf_counter() - tick) * 1000)
    result.requests += 1
    result.rows += len(records)
