"""The demo's live traffic: a period replayed through the HTTP service, slot by slot.

At each slot start T: materialize up to T (`replay.replay`), publish the stream's events before
T and wait for the processor to apply them, then send the slot's entity rows to every model, one
request per model, as of T. What happened is counted in a `TrafficReport`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa

from maquette.config import Settings
from maquette.data.sql import duckdb_connection
from maquette.features import redis_layout as wire
from maquette.features.layer import FeatureLayer
from maquette.platform import replay
from maquette.stream.aggregations import stream_definition
from maquette.stream.events import publish
from maquette.stream.history import events_sql

Progress = Callable[[str, int, int], None]
# Seconds the replay waits, at each slot, for the stream processor to apply the slot's events.
STREAM_WAIT_S = 30.0


def request_fields(settings: Settings, layer: FeatureLayer, name: str) -> list[str]:
    """What a prediction request of model `name` carries: entity keys, partition key, request
    fields (in the service's own terms)."""
    spec = settings.model_spec(name)
    return layer.request_keys(spec.feature_service, spec.partition_by)


@dataclass
class TrafficReport:
    """What the replayed traffic did."""

    start: datetime
    end: datetime
    entity_rows: int = 0
    skipped: int = 0
    requests: int = 0
    failures: int = 0
    events: int = 0
    request_ms: list[float] = field(default_factory=list)
    materialize_s: float = 0.0
    stream_wait_s: float = 0.0
    # Slots at which the stream processor had not applied the events within STREAM_WAIT_S:
    # their predictions were served with streaming features behind the replay's clock.
    stream_behind: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    models: int = 1

    @property
    def rows_per_request(self) -> float:
        # Each slot's entity rows go once to every model.
        return self.entity_rows * self.models / max(self.requests, 1)


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


@dataclass(frozen=True)
class PublishedEvents:
    """Events published to the stream, and whether the processor applied them in time."""

    events: int
    waited_s: float
    caught_up: bool


def publish_events(
    settings: Settings,
    layer: FeatureLayer,
    start: datetime,
    end: datetime,
    timeout_s: float = STREAM_WAIT_S,
) -> PublishedEvents:
    """Publish the historical events in [start, end) to the stream, then wait (up to
    timeout_s) until the stream processor's value for the last of them is readable online."""
    return publish_and_wait(settings, layer, historical_events(settings, start, end), timeout_s)


def historical_events(settings: Settings, start: datetime, end: datetime) -> pa.Table:
    """The valid historical events in [start, end), in event-time order."""
    return duckdb_connection().sql(events_sql(settings, start, end)).to_arrow_table()


def publish_and_wait(
    settings: Settings,
    layer: FeatureLayer,
    events: pa.Table,
    timeout_s: float = STREAM_WAIT_S,
) -> PublishedEvents:
    """Publish `events` (in event-time order) to the stream, then wait (up to timeout_s) until
    the stream processor's value for the last of them is readable online.

    The processor writes each batch online as soon as it reads it, in event order, so once the
    last event's rows are in Redis, every earlier one is too.
    """
    if not events.num_rows:
        return PublishedEvents(0, 0.0, True)
    definition = stream_definition(settings)
    rows = events.to_pylist()
    publish(settings, rows)
    last = rows[-1]
    began = time.perf_counter()
    caught_up = True
    for agg in definition.aggregations:
        (group,) = layer.read_plan([f"{agg.view}:{agg.feature_names[0]}"]).groups
        key = wire.entity_key_bytes(
            {agg.key: last[agg.key]}, group.key_types, settings.feast.project
        )
        due = last[definition.event_time].timestamp()

        def applied(key: bytes = key, view: str = agg.view, due: float = due) -> bool:
            stored = wire.decode_timestamp_seconds(layer.redis.hget(key, wire.ts_field(view)))
            return stored is not None and stored >= due

        while not applied() and time.perf_counter() - began < timeout_s:
            time.sleep(0.005)
        caught_up = caught_up and applied()
    return PublishedEvents(len(rows), time.perf_counter() - began, caught_up)


class _PredictionRequests:
    """Sends a slot's entity rows to every model, one request per model, recording each answer."""

    def __init__(self, settings: Settings, client: httpx.Client, report: TrafficReport) -> None:
        self.names = list(settings.models)
        self.alias = settings.serving.default_alias
        self.client = client
        self.report = report

    def __call__(self, batch: list[dict[str, Any]], when: datetime) -> list[Any]:
        body_rows = [_json_row(r) for r in batch]
        answers = []
        for name in self.names:
            tick = time.perf_counter()
            response = self.client.post(
                "/predict",
                json={
                    "rows": body_rows,
                    "model": f"{name}@{self.alias}",
                    "as_of": when.isoformat(),
                },
            )
            self.report.request_ms.append((time.perf_counter() - tick) * 1000)
            self.report.requests += 1
            if response.status_code != 200:
                self.report.failures += 1
                if len(self.report.errors) < 5:
                    self.report.errors.append(f"{response.status_code}: {response.text[:200]}")
                continue
            answers.extend(response.json()["predictions"])
        return answers


class StreamFollower:
    """At each slot start, publishes the events not yet published and waits for the processor.

    The replay's events are read once, not per slot (a query per hourly slot was a quarter of
    the demo's replay)."""

    def __init__(
        self,
        settings: Settings,
        layer: FeatureLayer,
        period: tuple[datetime, datetime],
        report: TrafficReport,
    ) -> None:
        self.settings, self.layer, self.report = settings, layer, report
        self.until = period[0]
        self.events = historical_events(settings, *period)
        times = self.events[stream_definition(settings).event_time]
        # Event times as UTC microseconds, to find each slot's events by binary search.
        self.micros = times.cast(pa.timestamp("us", "UTC"), safe=False).cast(pa.int64()).to_numpy()
        self.taken = 0

    def __call__(self, clock: datetime, _upper: datetime) -> None:
        if clock <= self.until:
            return
        published = publish_and_wait(self.settings, self.layer, self.due(clock))
        self.report.events += published.events
        self.report.stream_wait_s += published.waited_s
        self.report.stream_behind += 0 if published.caught_up else 1

    def due(self, clock: datetime) -> pa.Table:
        """The events not yet published whose time is before `clock` (taken from now on)."""
        upto = int(np.searchsorted(self.micros, _micros(clock), side="left"))
        events = self.events.slice(self.taken, max(upto - self.taken, 0))
        self.until, self.taken = clock, max(upto, self.taken)
        return events


def _micros(when: datetime) -> int:
    return int(pd.Timestamp(when).tz_convert("UTC").value // 1000)


def replay_traffic(
    settings: Settings,
    layer: FeatureLayer,
    service_url: str,
    start: datetime,
    end: datetime,
    progress: Progress | None = None,
    with_stream: bool = True,
) -> TrafficReport:
    """Replay [start, end) as live traffic through the HTTP service, slot by slot.

    At each slot start T: materialize up to T, publish the events before T to the stream and
    wait for the processor, then send the slot's entity rows to every model in one request
    per model, as of T (a prediction made up to one slot ahead of the event).
    """
    names = list(settings.models)
    report = TrafficReport(start, end, models=len(names))
    fields = list(dict.fromkeys(f for n in names for f in request_fields(settings, layer, n)))
    rows = replay.entity_rows(settings, names[0], start, end)
    report.skipped = int(rows[fields].isna().any(axis=1).sum())
    rows = rows.dropna(subset=fields)
    report.entity_rows = len(rows)
    key = settings.serving.api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    follow = StreamFollower(settings, layer, (start, end), report) if with_stream else None
    began = time.perf_counter()
    with httpx.Client(base_url=service_url, headers=headers, timeout=30) as client:
        result = replay.replay(
            settings,
            rows,
            fields,
            _PredictionRequests(settings, client, report),
            start,
            end,
            slot=timedelta(minutes=settings.demo.slot_minutes),
            timestamp_column=settings.model_spec(names[0]).timestamp_column,
            on_slot=follow,
            progress=(lambda done, total: progress("replay", done, total)) if progress else None,
            layer=layer,
            per_slot=True,
        )
    if follow is not None:
        follow(end, end)  # the last events, so the stream has the whole period
    report.materialize_s = result.materialize_s
    report.seconds = time.perf_counter() - began
    return report
