"""Speed-layer benchmark (`maquette bench stream`): Maquette's stream processor and stock
`FeatureStore.push`, at fixed publishing rates and on a backlog.

Lag is measured from outside, as a reader sees it: a prober polls what `online_features` can
read, per (view, key), and an event counts as readable once every view it feeds shows it.
The events, keys and views are the project's stream definition (`stream.definition`).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis
from rich.console import Console

from maquette.bench.harness import (
    bench_dir,
    bench_settings,
    flush,
    python_process,
    results_table,
    settings_from_ref,
    settings_ref,
)
from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.redis_server import ensure_redis
from maquette.data.sql import duckdb_connection
from maquette.features import redis_layout as wire
from maquette.features.layer import FeatureLayer
from maquette.stream.aggregations import (
    STAMP_OFFSET_US,
    StreamDefinition,
    feast_type,
    stream_definition,
)
from maquette.stream.events import epoch_us
from maquette.stream.history import events_sql, replay
from maquette.stream.processor import StreamProcessor

STREAM_BENCH = "maquette:bench:events"
# Replays start before any event: every benchmark publishes the source's first events.
EVERY_EVENT = datetime(1970, 1, 1, tzinfo=UTC)
HEADERS = (
    "case",
    "published",
    "readable in run",
    "sustained events/s",
    "lag p50 ms",
    "lag p99 ms",
)

# (published at, the event's key values in the definition's key order, event time in µs)
Published = tuple[float, tuple[str, ...], int]


@dataclass
class _StreamCase:
    label: str
    feast_push: bool
    rate: float | None  # offered events/s; None: a backlog published before the processor starts
    events: int


def _stream_bench_settings(settings: Settings) -> Settings:
    """The bench's Redis database and Feast project, a stream of its own, no warm start."""
    bench = bench_settings(settings)
    bench.stream.stream, bench.stream.dead_letter = STREAM_BENCH, f"{STREAM_BENCH}:dead"
    bench.stream.backfill_before = None
    # The bench reads back every published entry (counts, lags) after the processor stops.
    bench.stream.trim_acknowledged = False
    return bench


def _apply_stream_views(bench: Settings) -> None:
    """The stream views, as in the feature repo, with batch sources in the bench folder."""
    # Imported here: Feast takes seconds to import.
    from feast import Entity, FeatureView, FileSource, PushSource, ValueType

    objects: list[Any] = []
    for agg in stream_definition(bench).aggregations:
        value_type = ValueType.INT64 if agg.key_type == "int64" else ValueType.STRING
        entity = Entity(name=agg.key, join_keys=[agg.key], value_type=value_type)
        path = bench_dir(bench) / "stream" / f"{agg.view}.parquet"
        batch = FileSource(
            name=f"{agg.view}_source", path=str(path), timestamp_field="event_timestamp"
        )
        push = PushSource(name=agg.push_source, batch_source=batch)
        view = FeatureView(
            name=agg.view,
            entities=[entity],
            ttl=agg.window,
            schema=agg.feast_schema(),
            source=push,
        )
        objects += [entity, push, view]
    bench.registry_path.parent.mkdir(parents=True, exist_ok=True)
    FeatureLayer(bench).store.apply(objects)


# ---------------------------------------------------------------- child processes


def _stream_child_main(settings_json: str, feast_push: str) -> None:
    """The processor in its own interpreter: "ready" once set up, its result as JSON at SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    processor = StreamProcessor(settings_from_ref(settings_json), feast_push == "1")
    print("ready", flush=True)
    result = processor.run(stop=stop)
    print(json.dumps(vars(result)), flush=True)


def _publisher_child_main(settings_json: str, rate: str, limit: str) -> None:
    settings = settings_from_ref(settings_json)
    replay(settings, EVERY_EVENT, rate=float(rate), limit=int(limit))


def _child_process(entry: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    return python_process(f"from {__name__} import {entry} as m; m(*sys.argv[1:])", *args, **popen)


# ---------------------------------------------------------------- what a reader sees


class _Prober:
    """Polls what `online_features` can read: per (view, key), the newest event time visible."""

    def __init__(self, bench: Settings, keys: dict[str, list[str]]) -> None:
        self.definition = stream_definition(bench)
        aggregations = self.definition.aggregations
        self.layer = FeatureLayer(bench)
        self.client = redis.Redis.from_url(str(bench.redis.url))
        self.slots = [(a.view, k) for a in aggregations for k in keys[a.key]]
        self.reads = [
            (
                wire.entity_key_bytes(
                    {a.key: a.key_of(k)}, {a.key: feast_type(a.key_type)}, bench.feast.project
                ),
                wire.ts_field(a.view),
            )
            for a in aggregations
            for k in keys[a.key]
        ]
        width = max(len(values) for values in keys.values())
        self.rows = [
            {key: values[i % len(values)] for key, values in keys.items()} for i in range(width)
        ]
        self.features = [f"{a.view}:{n}" for a in aggregations for n in a.feature_names]
        self.times: list[float] = []
        self.visible: list[list[int]] = []

    def poll(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, field in self.reads:
            pipe.hget(key, field)
        stamps = pipe.execute()
        # Read the timestamps first: the values read next are at least that new.
        self.layer.online_features(self.rows, self.features)
        now = time.time()
        seen = []
        for raw in stamps:
            seconds = wire.decode_timestamp_seconds(raw)
            seen.append(-1 if seconds is None else round(seconds * 1e6) - STAMP_OFFSET_US)
        self.times.append(now)
        self.visible.append(seen)

    def newest(self) -> dict[tuple[str, str], int]:
        return dict(zip(self.slots, self.visible[-1], strict=True)) if self.visible else {}

    def slots_of(self, key_values: tuple[str, ...]) -> list[tuple[str, str]]:
        """The (view, key) slots one event feeds."""
        position = {key: i for i, key in enumerate(self.definition.keys)}
        return [(a.view, key_values[position[a.key]]) for a in self.definition.aggregations]

    def readable_at(self, events: list[Published]) -> np.ndarray:
        """For each published event: when every row it feeds was readable."""
        times = np.array(self.times)
        visible = np.maximum.accumulate(np.array(self.visible), axis=0)
        column = {slot: i for i, slot in enumerate(self.slots)}
        out = np.full(len(events), np.inf)
        for j, (_, key_values, when) in enumerate(events):
            ready = -np.inf
            for slot in self.slots_of(key_values):
                seen = visible[:, column[slot]]
                i = int(np.searchsorted(seen, when, side="left"))
                ready = max(ready, times[i] if i < len(times) else np.inf)
            out[j] = ready
        return out


def _published_events(settings: Settings, limit: int) -> list[Published]:
    """The events the bench publishes, in order (not yet published: at 0.0)."""
    definition = stream_definition(settings)
    keys = ", ".join(f'"{k}"' for k in definition.keys)
    sql = events_sql(settings, EVERY_EVENT) + f" LIMIT {limit}"
    query = f'SELECT {keys}, epoch_us("{definition.event_time}") FROM ({sql})'
    rows = duckdb_connection(quiet=True).sql(query).fetchall()
    return [(0.0, tuple(row[:-1]), row[-1]) for row in rows]


def _read_published(bench: Settings, definition: StreamDefinition) -> list[Published]:
    """What the bench's stream holds: when each entry was added, its keys and event time."""
    client = redis.Redis.from_url(str(bench.redis.url))
    event_time = definition.event_time.encode()
    return [
        (
            int(i.split(b"-")[0]) / 1000,
            tuple(f[k.encode()].decode() for k in definition.keys),
            epoch_us(datetime.fromisoformat(f[event_time].decode())),
        )
        for i, f in client.xrange(STREAM_BENCH)
    ]


# ---------------------------------------------------------------- one case


def _wait_until_readable(
    prober: _Prober,
    last: Published,
    publisher: subprocess.Popen[str] | None,
    deadline: float | None,
    extra_s: float,
) -> float:
    """Poll until the last event is readable or the deadline passed; the time it stopped."""
    _, last_keys, last_time = last
    while True:
        prober.poll()
        newest = prober.newest()
        if min(newest[slot] for slot in prober.slots_of(last_keys)) >= last_time:
            break
        if publisher and deadline is None and publisher.poll() is not None:
            deadline = time.time() + extra_s
        if deadline and time.time() > deadline:
            break
        time.sleep(0.005)
    return time.time()


def _case_result(
    case: _StreamCase, prober: _Prober, published: list[Published], began: float, end: float
) -> dict[str, Any]:
    ready = prober.readable_at(published)
    sent = np.array([p[0] for p in published])
    readable = np.isfinite(ready)
    # Events never readable within the run count with the lag they had reached by its end.
    lags = np.where(readable, ready, end) - sent
    first = sent.min() if case.rate else began
    span = ready[readable].max() - first if readable.any() else float("nan")
    return {
        "label": case.label,
        "published": len(published),
        "readable": int(readable.sum()),
        "rate": readable.sum() / span,
        "p50": float(np.percentile(lags, 50)),
        "p99": float(np.percentile(lags, 99)),
        "bounded": not readable.all(),
        "backlog": case.rate is None,
        "polls": len(prober.times),
        "lags": lags,
        "sent": sent,
    }


def _stream_case(
    settings: Settings, bench: Settings, case: _StreamCase, extra_s: float
) -> dict[str, Any]:
    """One processor run against one publishing pattern, lag measured by polling reads."""
    flush(bench)
    for path in (bench_dir(bench) / "stream").glob("*.parquet"):
        path.unlink()
    bench_json = settings_ref(bench)
    definition = stream_definition(settings)
    events = _published_events(settings, case.events)
    keys = {k: sorted({e[1][i] for e in events}) for i, k in enumerate(definition.keys)}
    prober = _Prober(bench, keys)
    prober.poll()
    if case.rate is None:  # a backlog: everything waits in the stream before the processor starts
        replay(bench, EVERY_EVENT, speed=None, limit=case.events)
    push = "1" if case.feast_push else "0"
    processor = _child_process("_stream_child_main", bench_json, push, stdout=subprocess.PIPE)
    assert processor.stdout is not None
    if processor.stdout.readline().strip() != "ready":
        processor.wait(30)
        return {"label": case.label, "error": "the processor did not start"}
    began = time.time()
    publisher = None
    if case.rate:
        args = (bench_json, str(case.rate), str(case.events))
        publisher = _child_process("_publisher_child_main", *args)
    deadline = None if publisher else began + extra_s + case.events / 1_000
    end = _wait_until_readable(prober, events[-1], publisher, deadline, extra_s)
    if publisher and publisher.poll() is None:
        publisher.terminate()
    processor.terminate()
    out, _ = processor.communicate(timeout=180)
    result = _case_result(case, prober, _read_published(bench, definition), began, end)
    result["processor"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return result


# ---------------------------------------------------------------- the benchmark


def _cells(result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return [result.get("label", "?"), "failed", "-", "-", "-", "-"]
    # A backlog was published before the processor started: its lag says nothing.
    mark = ">= " if result["bounded"] else ""
    lags = [f"{mark}{result[p] * 1000:,.0f}" for p in ("p50", "p99")]
    return [
        result["label"],
        f"{result['published']:,}",
        f"{result['readable']:,}",
        f"{result['rate']:,.0f}",
        *(["-", "-"] if result["backlog"] else lags),
    ]


def run_stream_benchmark(
    settings: Settings, seconds: float, stock_seconds: float, backlog: int, console: Console
) -> str:
    """Maquette's processor and stock `FeatureStore.push`, at 1,000 and 5,000 events/s."""
    ensure_redis(settings)
    if settings.stream.events_source:
        datasets.require_loaded(settings, settings.stream.events_source)
    bench = _stream_bench_settings(settings)
    _apply_stream_views(bench)
    cases = [
        _StreamCase("Maquette, 1,000 events/s", False, 1_000, int(1_000 * seconds)),
        _StreamCase("Maquette, 5,000 events/s", False, 5_000, int(5_000 * seconds)),
        _StreamCase(f"Maquette, backlog of {backlog:,}", False, None, backlog),
        _StreamCase("stock push, 1,000 events/s", True, 1_000, int(1_000 * stock_seconds)),
        _StreamCase("stock push, 5,000 events/s", True, 5_000, int(5_000 * stock_seconds)),
    ]
    console.print("[bold]speed layer benchmark[/] (publish -> readable by online_features)")
    rows = []
    for case in cases:
        console.print(f"  {case.label}: {case.events:,} events ...")
        extra = 10.0 if case.feast_push else 20.0
        rows.append(_cells(_stream_case(settings, bench, case, extra)))
    title = "speed layer: sustained rate and freshness lag"
    return results_table(console, title, HEADERS, rows) + "\n"
