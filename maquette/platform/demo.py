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

import pyarrow as pa

from maquette import registry
from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.redis_server import store_url
from maquette.data.secrets import redact
from maquette.data.sql import duckdb_connection
from maquette.errors import ComponentFailed, ConfigError, DataNotLoaded
from maquette.features.layer import FeatureLayer
from maquette.features.materialize import MaterializeResult
from maquette.features.online import OnlineFeatures
from maquette.monitoring import monitor as monitoring
from maquette.platform import components as platform
from maquette.platform.components import prefect_api
from maquette.platform.flows import project_flow
from maquette.platform.traffic import TrafficReport, replay_traffic
from maquette.serving import prediction_log as predictions
from maquette.stream.backfill import load_dataset
from maquette.stream.operations import reset, wait_until_committed
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


def _start_platform(
    settings: Settings, layer: FeatureLayer, report: DemoReport, announce: Callable[[str], None]
) -> None:
    """Redis and the Prefect server, with an empty online store and stream."""
    with _stage(report, "start Redis and Prefect", announce):
        report.platform = platform.up(settings, ["redis", "prefect"], announce)
        report.redis_url = redact(store_url(settings))  # the summary is shown and saved
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
    if with_stream:
        # The replay waited for the stream's online rows; monitoring compares served features
        # with offline ones, which the processor commits every stream.commit_interval_s (on a
        # busy machine, later): skew came out 100% on the streaming features when it ran first.
        with _stage(report, "stream processor's offline rows committed", announce):
            wait = 60 + 4 * settings.stream.commit_interval_s
            if not wait_until_committed(settings, wait):
                announce(f"the stream processor had not committed every event after {wait:.0f}s")


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
    console = "console" in settings.orchestration.components
    if console:
        # Nobody looks at it before the end: it loads while the monitoring pass runs (mostly
        # on one core), rather than taking CPU from training and the replay.
        platform.up(settings, ["console"], announce, wait=False)
    with _stage(report, "monitor", announce):
        # Judged at the end of the replay: the labels known by then are joined.
        runner = monitor or (lambda s, when: monitoring.run(s, None, when, announce=announce))
        report.monitoring = runner(settings, end)
    if console:
        with _stage(report, "console ready", announce):
            platform.wait_until_up(settings, ["console"])
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
