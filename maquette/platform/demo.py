"""The main job: the whole Michelangelo lifecycle on the configured dataset, each stage timed.

Start the platform (Redis, Prefect server) -> load the offline store (and backfill the
streaming features) -> `feast apply` -> start the deployments and the stream processor ->
materialize up to the replay start -> build a training frame -> train, register and promote
every declared model -> start the prediction service -> replay live traffic (December 2013 for
the demo): hour by hour, materialize, publish the hour's departures to the stream, send the
next hour's flights to the HTTP service -> drain the prediction log -> one monitoring pass.
The CLI renders progress and chooses how flows run (on the platform's Prefect server); this
module only does the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.redis_server import redis_url
from maquette.features.layer import FeatureLayer, MaterializeResult, OnlineFeatures

Progress = Callable[[str, int, int], None]
# (settings, model name, trials or None) -> registered "NAME:VERSION"
Trainer = Callable[[Settings, str, int | None], str]
# (settings, as of) -> monitoring.MonitorRun
Monitor = Callable[[Settings, datetime], Any]


def train_plain(settings: Settings, name: str, trials: int | None) -> str:
    from maquette.training import pipeline as training

    return str(training.train(settings, name, trials).tag)


@dataclass
class DemoReport:
    """What the main job did, for the closing summary."""

    redis_url: str = ""
    tables: list[datasets.TableSummary] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    materialized: MaterializeResult | None = None
    training_rows: int = 0
    training_columns: list[str] = field(default_factory=list)
    label_rows: int = 0
    online_sample: OnlineFeatures | None = None
    online_entity: dict[str, Any] = field(default_factory=dict)
    models: list[Any] = field(default_factory=list)
    platform: list[Any] = field(default_factory=list)
    traffic: TrafficReport | None = None
    drained: int = 0
    monitoring: Any = None
    stage_seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def _stage(report: DemoReport, name: str, announce: Callable[[str], None]) -> Iterator[None]:
    announce(name)
    began = time.perf_counter()
    yield
    report.stage_seconds[name] = time.perf_counter() - began


def entity_frame(settings: Settings, limit: int | None = None) -> pa.Table:
    """Entity and label rows of the dataset's entity source (newest last)."""
    path = datasets.require_loaded(settings, settings.dataset.entity_source)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    sql = "SELECT * FROM read_parquet($path) ORDER BY event_timestamp"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return con.sql(sql, params={"path": str(path)}).to_arrow_table()


def request_fields(settings: Settings, layer: FeatureLayer, name: str) -> list[str]:
    """What a prediction request of model `name` carries: entity keys, partition key, request
    fields (in the service's own terms)."""
    spec = settings.model_spec(name)
    plan = layer._plan(spec.feature_service)
    keys = [k for g in plan.groups for k in g.join_keys]
    if spec.partition_by:
        keys.append(spec.partition_by)
    return list(dict.fromkeys([*keys, *plan.request_fields]))


@dataclass
class TrafficReport:
    """What the replayed traffic did."""

    start: datetime
    end: datetime
    flights: int = 0
    skipped: int = 0
    requests: int = 0
    failures: int = 0
    events: int = 0
    request_ms: list[float] = field(default_factory=list)
    materialize_s: float = 0.0
    stream_wait_s: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    models: int = 1

    @property
    def rows_per_request(self) -> float:
        # Each slot's flights go once to every model.
        return self.flights * self.models / max(self.requests, 1)


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


def publish_departures(
    settings: Settings, layer: FeatureLayer, start: datetime, end: datetime, timeout_s: float = 30
) -> tuple[int, float]:
    """Publish the historical departures in [start, end) to the stream, then wait until the
    stream processor's value for the last of them is readable online. (events, seconds waited)

    The processor writes each batch online as soon as it reads it, in event order, so once the
    last event's rows are in Redis, every earlier one is too.
    """
    from maquette.features import redis_layout as wire
    from maquette.stream import processor as stream

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    events = con.sql(stream.events_sql(settings, start, end)).to_arrow_table().to_pylist()
    if not events:
        return 0, 0.0
    stream.publish(settings, events)
    last = events[-1]
    began = time.perf_counter()
    for agg in stream.AGGREGATIONS:
        (group,) = layer._plan([f"{agg.view}:{agg.feature_names[0]}"]).groups
        key = wire.entity_key_bytes(
            {agg.key: last[agg.key]}, group.key_types, settings.feast.project
        )
        due = last[stream.EVENT_TIME].timestamp()
        while time.perf_counter() - began < timeout_s:
            stored = wire.decode_timestamp_seconds(layer.redis.hget(key, wire.ts_field(agg.view)))
            if stored is not None and stored >= due:
                break
            time.sleep(0.005)
    return len(events), time.perf_counter() - began


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

    At each slot start T: materialize up to T, publish the departures before T to the stream
    and wait for the processor, then send the slot's flights to every model in one request
    per model, as of T (a prediction made up to one slot ahead of departure).
    """
    import httpx

    from maquette.platform import replay

    names = list(settings.models)
    report = TrafficReport(start, end, models=len(names))
    fields = list(dict.fromkeys(f for n in names for f in request_fields(settings, layer, n)))
    rows = replay.entity_rows(settings, names[0], start, end)
    report.skipped = int(rows[fields].isna().any(axis=1).sum())
    rows = rows.dropna(subset=fields)
    report.flights = len(rows)
    headers = (
        {"Authorization": f"Bearer {settings.serving.api_key}"} if settings.serving.api_key else {}
    )
    published = {"until": start}

    def on_slot(clock: datetime, _upper: datetime) -> None:
        if not with_stream or clock <= published["until"]:
            return
        events, waited = publish_departures(settings, layer, published["until"], clock)
        report.events += events
        report.stream_wait_s += waited
        published["until"] = clock

    began = time.perf_counter()
    with httpx.Client(base_url=service_url, headers=headers, timeout=30) as client:

        def send(batch: list[dict[str, Any]], when: datetime) -> list[Any]:
            body_rows = [_json_row(r) for r in batch]
            answers = []
            for name in names:
                tick = time.perf_counter()
                response = client.post(
                    "/predict",
                    json={
                        "rows": body_rows,
                        "model": f"{name}@{settings.serving.default_alias}",
                        "as_of": when.isoformat(),
                    },
                )
                report.request_ms.append((time.perf_counter() - tick) * 1000)
                report.requests += 1
                if response.status_code != 200:
                    report.failures += 1
                    if len(report.errors) < 5:
                        report.errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                answers.extend(response.json()["predictions"])
            return answers

        result = replay.replay(
            settings,
            rows,
            fields,
            send,
            start,
            end,
            slot=timedelta(minutes=settings.demo.slot_minutes),
            timestamp_column=settings.model_spec(names[0]).timestamp_column,
            on_slot=on_slot,
            progress=(lambda done, total: progress("replay", done, total)) if progress else None,
            layer=layer,
            per_slot=True,
        )
    on_slot(end, end)  # the last departures, so the stream has the whole period
    report.materialize_s = result.materialize_s
    report.seconds = time.perf_counter() - began
    return report


def run_demo(
    settings: Settings,
    announce: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
    quick: bool = False,
    trainer: Trainer = train_plain,
    monitor: Monitor | None = None,
) -> DemoReport:
    """Run the lifecycle end to end on the configured dataset.

    `quick`: one search trial per model and `demo.quick_days` of replayed traffic.
    """
    from maquette import registry
    from maquette.platform import components as platform

    report = DemoReport()
    layer = FeatureLayer(settings)
    demo = settings.demo
    start = demo.replay_start
    end = (
        min(demo.replay_end, start + timedelta(days=demo.quick_days)) if quick else demo.replay_end
    )
    with _stage(report, "start Redis and Prefect", announce):
        report.platform = platform.up(settings, ["redis", "prefect"], announce)
        report.redis_url = redis_url(settings)
        # A rerun replays the same history: start from an empty online store and stream.
        platform.down(settings, ["stream"])
        from maquette.stream import processor as stream

        stream.reset(settings)
        layer.clear_online()
    with _stage(report, "load offline store", announce):
        report.tables = datasets.load_dataset(settings, announce)
    with _stage(report, "feast apply", announce):
        report.registered = layer.apply()
    with _stage(report, "start deployments and stream processor", announce):
        report.platform = platform.up(settings, ["deployments", "stream"], announce)
    with _stage(report, "materialize to Redis", announce):
        # Up to where the replay starts: the replay moves the online store along its clock.
        report.materialized = layer.materialize(
            datetime(1970, 1, 1, tzinfo=UTC), start, progress=progress
        )
    with _stage(report, "build training frame", announce):
        entities = entity_frame(settings)
        frame = layer.training_frame(entities)
        report.training_rows, report.training_columns = frame.num_rows, frame.column_names
        if "arr_delay" in entities.column_names:
            report.label_rows = entities.num_rows - entities["arr_delay"].null_count
    with _stage(report, "read online features", announce):
        before = entities.filter(pa.compute.less(entities["event_timestamp"], start))
        row = {k: v[0] for k, v in before.slice(before.num_rows - 1, 1).to_pydict().items()}
        report.online_entity = row
        report.online_sample = layer.online_features([row], as_of=row["event_timestamp"])
    for name in settings.models:
        with _stage(report, f"train {name}", announce):
            tag = trainer(settings, name, 1 if quick else None)
            registry.promote(settings, tag, settings.serving.default_alias)
            report.models.append(registry.resolve(settings, tag))
    with _stage(report, "start prediction service", announce):
        report.platform = platform.up(settings, ["service"], announce)
    with (
        _stage(report, f"replay {start:%Y-%m-%d} to {end:%Y-%m-%d}", announce),
        # A wall-clock materialization would load the whole replay period into Redis at once.
        platform.schedules_paused(settings, ["materialize/incremental", "monitor/models"]),
    ):
        service = f"http://{settings.serving.host}:{settings.serving.port}"
        report.traffic = replay_traffic(
            settings,
            layer,
            service,
            start,
            end,
            progress,
            "stream" in settings.orchestration.components,
        )
    with _stage(report, "drain prediction log", announce):
        from maquette.serving import prediction_log as predictions

        report.drained = predictions.drain(settings).entries
    with _stage(report, "monitor", announce):
        from maquette.monitoring import monitor as monitoring

        # Judged at the end of the replay: labels of flights landed by then are known.
        runner = monitor or (lambda s, when: monitoring.run(s, None, when, announce=announce))
        report.monitoring = runner(settings, end)
    report.platform = platform.status(settings)
    return report
