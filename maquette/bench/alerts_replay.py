"""One replay of `maquette bench alerts`: the platform's real parts, in one process, on the
replay clock.

At each slot start T (an hour by default), in the order the platform runs them:
1. materialize the batch views up to T (a stale_view fault holds its view back);
2. publish the departures (events) before T to the project's event stream and let the stream
   processor apply them, so every streamed value served in the slot is the processor's;
3. inject the faults in progress (`alerts_inject.Injector`), or repair the ones just over;
4. every `pass_every`: a monitoring pass, `monitor.run(settings, as_of=T)` (drain, labels
   known by T, metrics, drift, skew, freshness, incidents);
5. predict the slot's entity rows, every model in one `Predictor.predict_many` call, as of T
   (logged to the Redis prediction log, drained by the next pass), as the demo's replay does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from maquette.bench.alerts_faults import Fault, Replay
from maquette.bench.alerts_inject import EPOCH, FaultEvent, Injector, batch_view, project_views
from maquette.bench.alerts_project import has_stream, stream_start
from maquette.config import Settings
from maquette.data.sql import duckdb_connection, sql_identifier, sql_literal
from maquette.errors import DataNotLoaded, MaquetteError
from maquette.features.layer import FeatureLayer
from maquette.features.read_plan import view_source
from maquette.monitoring import monitor
from maquette.platform import replay as history
from maquette.platform.traffic import request_fields
from maquette.serving.predictor import PredictCall, Predictor
from maquette.stream.aggregations import stream_definition
from maquette.stream.events import publish
from maquette.stream.history import events_sql
from maquette.stream.processor import StreamProcessor

# (run, slots done, slots in all)
Progress = Callable[[str, int, int], None]


@dataclass
class PassRecord:
    """One monitoring pass of a replay."""

    as_of: datetime
    seconds: float
    opened: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    open: int = 0
    note: str = ""


@dataclass
class ReplayRun:
    """What one replay did, and how long each part took."""

    run: str
    start: datetime
    end: datetime
    slots: int = 0
    rows: int = 0
    requests: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    events: int = 0
    late_events: int = 0
    passes: list[PassRecord] = field(default_factory=list)
    fault_events: list[FaultEvent] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, part: str, began: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - began


class SpeedLayer:
    """The project's stream, driven by the replay clock: the events before T are published and
    the processor (in this process) reads and applies exactly those, writing their online rows;
    `commit` makes the offline rows durable (before each monitoring pass, whose skew check
    recomputes streamed features offline), as the running processor does every few seconds."""

    def __init__(self, settings: Settings, since: datetime, end: datetime) -> None:
        self.settings = settings
        self.processor = StreamProcessor(settings)
        time_field = stream_definition(settings).event_time
        sql = events_sql(settings, since, end)
        self.events = duckdb_connection(quiet=True).sql(sql).to_arrow_table()
        times = self.events[time_field].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        self.times = times.to_numpy()
        self.done = 0  # events published so far (they are in event-time order)

    def __call__(self, clock: datetime) -> tuple[int, int]:
        """Publish and apply the events before `clock`; (events applied, late ones)."""
        upto = int(np.searchsorted(self.times, _micros(clock)))
        if upto <= self.done:
            return 0, 0
        batch = self.events.slice(self.done, upto - self.done).to_pylist()
        self.done = upto
        publish(self.settings, batch)
        result = self.processor.result
        before, late_before, read = result.events, result.late, 0
        while read < len(batch):
            got = self.processor.poll()
            if not got and not self.processor.poll():
                raise RuntimeError(f"the stream processor read {read} of {len(batch)} events")
            read += got
        return result.events - before, result.late - late_before

    def commit(self) -> None:
        self.processor.commit()


class _DueViews:
    """Which batch views have rows newer than their last materialization: a view whose table
    has nothing new since is skipped in that slot (Redis ends up the same; Feast's registry
    records one longer interval), which saves most of a slot's time."""

    def __init__(self, layer: FeatureLayer, views: list[str], start: datetime) -> None:
        con = duckdb_connection(quiet=True)
        self.times: dict[str, np.ndarray] = {}
        for name in views:
            source = view_source(batch_view(layer, name), [])
            column = f"{sql_identifier(source.timestamp_field)}::TIMESTAMPTZ"
            sql = (
                f"SELECT DISTINCT epoch_us({column}) AS t FROM "
                f"read_parquet({sql_literal(str(source.path))}) ORDER BY t"
            )
            self.times[name] = con.sql(sql).fetchnumpy()["t"]
        self.last = dict.fromkeys(views, _micros(start))

    def due(self, clock: datetime, held: set[str]) -> list[str]:
        now = _micros(clock)
        out = []
        for name, times in self.times.items():
            if name in held:
                continue
            newer = np.searchsorted(times, self.last[name], side="right")
            if newer < len(times) and times[newer] <= now:
                out.append(name)
            self.last[name] = now  # due or not, nothing in (last, now] is left behind
        return out


def _pass(settings: Settings, clock: datetime) -> PassRecord:
    began = time.perf_counter()
    try:
        outcome = monitor.run(settings, as_of=clock, announce=lambda _: None)
    except DataNotLoaded as exc:  # nothing logged or labelled yet: the platform says the same
        return PassRecord(clock, time.perf_counter() - began, note=exc.message)
    return PassRecord(
        clock,
        time.perf_counter() - began,
        [i.id for i in outcome.incidents_opened],
        [i.id for i in outcome.incidents_resolved],
        len(outcome.open_incidents),
    )


def replay_run(
    settings: Settings,
    plan: Replay,
    faults: list[Fault],
    run: str,
    progress: Progress | None = None,
    models: list[str] | None = None,
) -> ReplayRun:
    """Replay `plan` on the replay project `settings` (see `alerts_project.replay_project`)
    with `faults` injected (none for the clean run); monitoring passes along the clock."""
    began = time.perf_counter()
    names = models or [n for n, s in settings.models.items() if s.labels is not None]
    layer = FeatureLayer(settings)
    result = ReplayRun(run, plan.start, plan.end)
    injector = Injector(settings, layer, faults, Path(settings.state_dir) / "bench_labels")
    tick = time.perf_counter()
    batch_views = [v for v, (_, pushed) in project_views(layer).items() if not pushed]
    # Every view, streamed ones too (from the batch layer's rows), as the demo does before its
    # replay: the processor writes a key online only once one of its events arrives.
    layer.materialize(EPOCH, plan.start)
    views = _DueViews(layer, batch_views, plan.start)
    speed = (
        SpeedLayer(settings, stream_start(settings, plan.start), plan.end)
        if has_stream(settings)
        else None
    )
    if speed is not None:
        result.events += speed(plan.start)[0]
        speed.commit()
    result.add_time("prepare", tick)
    rows, fields, when = _entity_rows(settings, layer, names, plan)
    predictor = Predictor(settings)
    alias = settings.serving.default_alias
    slot, every = plan.slot_length, plan.pass_interval
    total = int((plan.end - plan.start) / slot) + (1 if (plan.end - plan.start) % slot else 0)
    clock = plan.start
    while clock < plan.end:
        upper = min(clock + slot, plan.end)
        tick = time.perf_counter()
        due = views.due(clock, injector.held_views(clock))
        if due:
            layer.materialize_incremental(clock, views=due)
        result.add_time("materialize", tick)
        if speed is not None:
            tick = time.perf_counter()
            applied, late = speed(clock)
            result.events, result.late_events = result.events + applied, result.late_events + late
            result.add_time("stream", tick)
        tick = time.perf_counter()
        injector.after_refresh(clock)
        result.add_time("inject", tick)
        if clock > plan.start and (clock - plan.start) % every == timedelta(0):
            if speed is not None:
                speed.commit()
            result.passes.append(_pass(settings, clock))
            result.seconds["monitor"] = (
                result.seconds.get("monitor", 0.0) + result.passes[-1].seconds
            )
        tick = time.perf_counter()
        first, last = np.searchsorted(when, [_micros(clock), _micros(upper)])
        if last > first:
            records = rows.iloc[first:last][fields].to_dict("records")
            calls = [PredictCall(records, f"{name}@{alias}", clock) for name in names]
            for answer in predictor.predict_many(calls):
                result.requests += 1
                if isinstance(answer, MaquetteError):
                    result.failures += 1
                    if len(result.errors) < 5:
                        result.errors.append(str(answer))
            result.rows += int(last - first)
        result.add_time("predict", tick)
        result.slots += 1
        if progress:
            progress(run, result.slots, total)
        clock = upper
    if speed is not None:
        speed(plan.end)
        speed.commit()
    result.passes.append(_pass(settings, plan.end))  # the last slot's predictions judged too
    result.seconds["monitor"] = result.seconds.get("monitor", 0.0) + result.passes[-1].seconds
    result.fault_events = injector.events
    result.seconds["total"] = time.perf_counter() - began
    return result


def _entity_rows(
    settings: Settings, layer: FeatureLayer, names: list[str], plan: Replay
) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """The replayed entity rows (first model's source, a sample if asked, in time order), the
    request fields every model needs, and the rows' event times (epoch microseconds)."""
    fields = list(dict.fromkeys(f for n in names for f in request_fields(settings, layer, n)))
    frame = history.entity_rows(settings, names[0], plan.start, plan.end, sample=plan.sample)
    frame = frame.dropna(subset=fields).reset_index(drop=True)
    ts = settings.model_spec(names[0]).timestamp_column
    when = frame[ts].dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64").to_numpy()
    return frame, fields, when


def _micros(when: datetime) -> int:
    return int((when - EPOCH).total_seconds() * 1_000_000)
