"""The main job: the whole Michelangelo lifecycle on the configured dataset, each stage timed.

Start the platform (Redis, Prefect server) -> hold the wall-clock schedules paused -> load the
offline store (and backfill the streaming features) -> `feast apply` -> start the deployments
and the stream processor -> materialize up to the replay start -> build a training frame ->
train, register and promote every declared model -> start the prediction service -> replay live
traffic (`demo.replay_start` to `demo.replay_end`): slot by slot, materialize, publish the slot's
events to the stream, send the next slot's entity rows to the HTTP service -> resume the
schedules -> drain the prediction log -> one monitoring pass.
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

import httpx
import pyarrow as pa

from maquette import registry
from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.redis_server import redis_url
from maquette.data.secrets import redact
from maquette.data.sql import duckdb_connection
from maquette.errors import ComponentFailed, ConfigError, DataNotLoaded
from maquette.features import redis_layout as wire
from maquette.features.layer import FeatureLayer
from maquette.features.materialize import MaterializeResult
from maquette.features.online import OnlineFeatures
from maquette.monitoring import monitor as monitoring
from maquette.platform import components as platform
from maquette.platform import replay
from maquette.platform.components import prefect_api
from maquette.platform.flows import project_flow
from maquette.serving import prediction_log as predictions
from maquette.stream.aggregations import stream_definition
from maquette.stream.backfill import load_dataset
from maquette.stream.events import publish
from maquette.stream.history import events_sql
from maquette.stream.operations import reset
from maquette.training import pipeline as training

Progress = Callable[[str, int, int], None]
# (settings, model name, trials or None) -> registered "NAME:VERSION"
Trainer = Callable[[Settings, str, int | None], str]
# (settings, as of) -> monitoring.MonitorRun
Monitor = Callable[[Settings, datetime], Any]
# Held paused from before the deployments' runner starts until the replay ends: the hourly
# materialization would load the replay period into Redis ahead of the replay's clock (and a
# monitoring pass would judge a half-replayed period).
HELD_SCHEDULES = ["materialize/incremental", "monitor/models"]
# Seconds the replay waits, at each slot, for the stream processor to apply the slot's events.
STREAM_WAIT_S = 30.0


def train_plain(settings: Settings, name: str, trials: int | None) -> str:
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
    drained: int = 0  # by the demo's own drain (the scheduled drain moves the rest)
    logged: int = 0  # predictions of the replay in Parquet after that drain
    schedules_held: list[str] = field(default_factory=list)
    schedules_resumed_at: datetime | None = None
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
    path = datasets.require_loaded(settings, settings.entity_source())
    con = duckdb_connection()
    sql = "SELECT * FROM read_parquet($path) ORDER BY event_timestamp"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return con.sql(sql, params={"path": str(path)}).to_arrow_table()


def labelled_rows(settings: Settings, entities: pa.Table) -> int:
    """Entity rows whose label is known, by the first declared model's label (0 without one)."""
    spec = next(iter(settings.models.values()), None)
    if spec is None:
        return 0
    con = duckdb_connection()
    con.register("entities", entities)
    sql = f"SELECT count(*) FROM entities WHERE ({spec.label}) IS NOT NULL"
    found = con.execute(sql).fetchone()
    return int(found[0]) if found else 0


def replay_period(settings: Settings, quick: bool = False) -> tuple[datetime, datetime]:
    """[start, end) of the replayed traffic: `demo.replay_*`, cut to `demo.quick_days` if quick."""
    demo = settings.demo
    if demo.replay_start is None or demo.replay_end is None:
        raise ConfigError(
            "demo.replay_start and demo.replay_end must be set for the demo's replay.",
            "Set them in maquette.yaml to a stretch of the entity source's event times after "
            "the models' test window, e.g. `demo: {replay_start: 2024-06-01, replay_end: "
            "2024-07-01}`.",
        )
    if not quick:
        return demo.replay_start, demo.replay_end
    return demo.replay_start, min(
        demo.replay_end, demo.replay_start + timedelta(days=demo.quick_days)
    )


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
    timeout_s) until the stream processor's value for the last of them is readable online.

    The processor writes each batch online as soon as it reads it, in event order, so once the
    last event's rows are in Redis, every earlier one is too.
    """

    definition = stream_definition(settings)
    con = duckdb_connection()
    events = con.sql(events_sql(settings, start, end)).to_arrow_table().to_pylist()
    if not events:
        return PublishedEvents(0, 0.0, True)
    publish(settings, events)
    last = events[-1]
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
    return PublishedEvents(len(events), time.perf_counter() - began, caught_up)


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


class _StreamFollower:
    """At each slot start, publishes the events not yet published and waits for the processor."""

    def __init__(
        self, settings: Settings, layer: FeatureLayer, start: datetime, report: TrafficReport
    ) -> None:
        self.settings, self.layer, self.until, self.report = settings, layer, start, report

    def __call__(self, clock: datetime, _upper: datetime) -> None:
        if clock <= self.until:
            return
        published = publish_events(self.settings, self.layer, self.until, clock)
        self.report.events += published.events
        self.report.stream_wait_s += published.waited_s
        self.report.stream_behind += 0 if published.caught_up else 1
        self.until = clock


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
    follow = _StreamFollower(settings, layer, start, report) if with_stream else None
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


def _start_platform(
    settings: Settings, layer: FeatureLayer, report: DemoReport, announce: Callable[[str], None]
) -> None:
    """Redis and the Prefect server, with an empty online store and stream."""
    with _stage(report, "start Redis and Prefect", announce):
        report.platform = platform.up(settings, ["redis", "prefect"], announce)
        report.redis_url = redact(redis_url(settings))  # the summary is shown and saved
        # A rerun replays the same history: start from an empty online store and stream.
        platform.down(settings, ["stream"])
        reset(settings)
        layer.clear_online()


def _prepare_features(
    settings: Settings,
    layer: FeatureLayer,
    report: DemoReport,
    start: datetime,
    announce: Callable[[str], None],
    progress: Progress | None,
) -> None:
    """Offline store, Feast registry, deployments, online store up to `start`, a training
    frame."""
    with _stage(report, "load offline store", announce):
        report.tables = load_dataset(settings, announce)
    with _stage(report, "feast apply", announce):
        report.registered = layer.apply()
    with _stage(report, "start deployments, stream processor and service", announce):
        # The service starts now, beside the others (its start, bentoml's processes importing
        # BentoML and Feast, overlaps theirs), and loads the models once they are promoted,
        # on its own: after training it only has to be found ready.
        report.platform = platform.up(settings, ["deployments", "stream", "service"], announce)
    with _stage(report, "materialize to Redis", announce):
        # Up to where the replay starts: the replay moves the online store along its clock.
        report.materialized = layer.materialize(
            datetime(1970, 1, 1, tzinfo=UTC), start, progress=progress
        )
    with _stage(report, "build training frame", announce):
        entities = entity_frame(settings)
        frame = layer.training_frame(entities)
        report.training_rows, report.training_columns = frame.num_rows, frame.column_names
        report.label_rows = labelled_rows(settings, entities)
    with _stage(report, "read online features", announce):
        before = entities.filter(pa.compute.less(entities["event_timestamp"], start))
        row = {k: v[0] for k, v in before.slice(before.num_rows - 1, 1).to_pydict().items()}
        report.online_entity = row
        report.online_sample = layer.online_features([row], as_of=row["event_timestamp"])


def _train_and_promote(
    settings: Settings,
    report: DemoReport,
    trainer: Trainer,
    quick: bool,
    announce: Callable[[str], None],
) -> None:
    """Train every declared model and promote it to the serving alias."""
    for name in settings.models:
        with _stage(report, f"train {name}", announce):
            tag = trainer(settings, name, 1 if quick else None)
            registry.promote(settings, tag, settings.serving.default_alias)
            report.models.append(registry.resolve(settings, tag))


def _serve_and_replay(
    settings: Settings,
    layer: FeatureLayer,
    report: DemoReport,
    period: tuple[datetime, datetime],
    announce: Callable[[str], None],
    progress: Progress | None,
) -> None:
    """Start the service and replay the period through it."""
    start, end = period
    with _stage(report, "prediction service ready", announce):
        report.platform = _service_ready(settings, announce)
    with _stage(report, f"replay {start:%Y-%m-%d} to {end:%Y-%m-%d}", announce):
        service = f"http://{settings.serving.host}:{settings.serving.port}"
        with_stream = "stream" in settings.orchestration.components
        report.traffic = replay_traffic(settings, layer, service, start, end, progress, with_stream)


def _service_ready(
    settings: Settings, announce: Callable[[str], None]
) -> list[platform.ComponentStatus]:
    """The service, once it has loaded the promoted models (started if it is not running)."""
    platform.up(settings, ["service"], announce)
    deadline = time.monotonic() + settings.orchestration.start_timeout_s
    while (found := platform.status(settings, ["service"]))[0].state != "running":
        if time.monotonic() > deadline or found[0].state in ("gave up", "stopped"):
            raise ComponentFailed(
                f"the prediction service is {found[0].state}: it did not load the promoted "
                f"models (waited up to {settings.orchestration.start_timeout_s:.0f}s).",
                f"Read its log ({found[0].log}) and `maquette status`.",
            )
        time.sleep(0.3)
    return found


def logged_predictions(
    settings: Settings, start: datetime, end: datetime, since: datetime | None = None
) -> int:
    """Predictions in Parquet (copies counted once) requested as of a time in [start, end),
    logged at or after `since` (a rerun replays the same period: count only its own)."""
    try:
        logged = predictions.logged_sql(settings)
    except DataNotLoaded:  # nothing drained yet, e.g. every request failed
        return 0
    sql = (
        f"SELECT count(*) FROM ({logged}) WHERE request_time >= $start AND request_time < $end "
        "AND logged_at >= $since"
    )
    since = since or datetime.min.replace(tzinfo=UTC)
    found = (
        duckdb_connection().execute(sql, {"start": start, "end": end, "since": since}).fetchone()
    )
    return int(found[0]) if found else 0


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
    platform.require_project_files(settings, list(settings.orchestration.components))
    report = DemoReport()
    began = datetime.now(UTC)  # this run's log entries are those logged from now on
    layer = FeatureLayer(settings)
    start, end = replay_period(settings, quick)
    _start_platform(settings, layer, report, announce)
    # Held from before the runner creates the deployments, so no wall-clock run can fire
    # during training or the replay, even if the runner restarts.
    with platform.schedules_paused(settings, HELD_SCHEDULES) as held:
        report.schedules_held = held
        _prepare_features(settings, layer, report, start, announce, progress)
        _train_and_promote(settings, report, trainer, quick, announce)
        _serve_and_replay(settings, layer, report, (start, end), announce, progress)
        report.schedules_resumed_at = datetime.now(UTC)  # just before they are resumed
    with _stage(report, "drain prediction log", announce):
        report.drained = predictions.drain(settings).entries
        report.logged = logged_predictions(settings, start, end, since=began)
    with _stage(report, "monitor", announce):
        # Judged at the end of the replay: the labels known by then are joined.
        runner = monitor or (lambda s, when: monitoring.run(s, None, when, announce=announce))
        report.monitoring = runner(settings, end)
    if "console" in settings.orchestration.components:
        # Last: nobody looks at it before the end, and its start would take CPU from the rest.
        with _stage(report, "start console", announce):
            platform.up(settings, ["console"], announce)
    report.platform = platform.status(settings)
    return report


def run_demo_on_platform(
    settings: Settings,
    announce: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
    quick: bool = False,
) -> DemoReport:
    """`run_demo` with training and monitoring run as the project's Prefect flows (`train`,
    `monitor`), reporting to the platform's Prefect server rather than a throwaway one."""

    def train_flow(s: Settings, name: str, trials: int | None) -> str:
        return str(project_flow(s, "train")(name, trials))

    def monitor_flow(s: Settings, as_of: datetime) -> Any:
        return project_flow(s, "monitor")(None, as_of)

    with prefect_api(settings):
        return run_demo(settings, announce, progress, quick, train_flow, monitor_flow)
