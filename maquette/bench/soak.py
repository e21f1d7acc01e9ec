"""Soak (`maquette bench soak`): the whole platform left to itself under steady traffic, with
Redis and the stream processor each killed once (kill -9) mid-run.

Nothing is restarted or run by hand: the supervisor brings the killed components back and the
Prefect schedules drain the prediction log (every minute) and run monitoring. Afterwards:
scheduled runs per deployment against the cron ticks of the window, restarts per component,
answers by HTTP status, and a reconciliation of every prediction the service acknowledged
(HTTP 200) against the raw Parquet files the drain wrote: each must be there exactly once.

The soak brings the platform up itself (it must be down) and takes it down at the end. Its
predictions go to a stream and a folder of their own (`<state>/bench/soak/predictions`), so the
project's prediction log is left alone and the reconciliation sees the soak's entries only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyarrow.parquet as pq
import redis
from rich.console import Console

from maquette.bench.harness import bench_dir, results_table
from maquette.config import Settings, load_settings
from maquette.data.redis_server import redis_url
from maquette.data.sql import duckdb_connection
from maquette.errors import ConfigError, StoreUnavailable
from maquette.features.layer import FeatureLayer
from maquette.platform import components as platform
from maquette.platform import replay, supervisor
from maquette.platform.demo import replay_period
from maquette.platform.flows import platform_prefect, platform_prefect_url
from maquette.platform.traffic import request_fields
from maquette.stream.events import publish
from maquette.stream.history import events_sql
from maquette.stream.operations import status as stream_status

# The flows the soak watches fire, on short crons (the others keep the project's schedules).
SCHEDULES: dict[str, str | None] = {"drain": "* * * * *", "monitor": "*/2 * * * *"}
SOAK_STREAM = "maquette:soak:predictions"
KILLED = ("redis", "stream")  # killed once each, at 1/3 and 2/3 of the run
DRAIN_WAIT_S = 180.0  # after the traffic, how long the schedule gets to empty the log
RUNS_WAIT_S = 300.0  # then how long the window's runs get to finish (monitoring takes minutes)
FINAL = ("Completed", "Failed", "Crashed", "Cancelled")  # state names of finished runs


@dataclass
class DeploymentRuns:
    """What one deployment's schedule did in the soak's window."""

    name: str  # FLOW/DEPLOYMENT
    crons: tuple[str, ...]
    ticks: int  # cron ticks in the window: runs expected
    states: dict[str, int]  # scheduler-created runs in the window, by state name

    @property
    def completed(self) -> int:
        return self.states.get("Completed", 0)


@dataclass
class SoakResult:
    """What a soak measured."""

    minutes: float
    started: datetime
    ended: datetime  # end of the traffic: the window is [started, ended)
    runs: list[DeploymentRuns] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)  # per component, from `status`
    states: dict[str, str] = field(default_factory=dict)  # per component, at the end
    kills: list[str] = field(default_factory=list)  # "redis (pid 123) at 01:02:03"
    requests: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # "200", "503", "ConnectError"...
    acknowledged: int = 0  # prediction ids the client saw in a 200
    lost: int = 0  # acknowledged, not in the Parquet log
    duplicated: int = 0  # acknowledged, in the Parquet log more than once
    extra: int = 0  # in the Parquet log, never seen by the client as a 200
    undrained: int = 0  # left in the prediction stream when the wait ended
    events_published: int = 0
    publish_failures: int = 0  # batches of events refused (Redis down), sent again later
    events_applied: int = 0  # events the processor committed as applied to their windows
    # Dead-lettered as late or malformed: a second soak on a project re-sends events older
    # than the processor's watermark, which it rejects as late.
    events_rejected: int = 0

    def runs_of(self, flow: str) -> list[DeploymentRuns]:
        return [r for r in self.runs if r.name.split("/")[0] == flow]


# ------------------------------------------------------------------ the run


def run_soak(
    settings: Settings,
    minutes: float,
    clients: int = 4,
    rate: float = 20.0,
    events_per_s: float = 20.0,
    schedules: dict[str, str | None] | None = None,
    console: Console | None = None,
) -> SoakResult:
    """Bring the platform up, load it for `minutes` (`rate` requests/s from `clients`
    clients, `events_per_s` stream events), kill Redis and the stream processor once each,
    wait for the schedule to drain the log, measure, take the platform down."""

    def say(message: str) -> None:
        if console is not None:
            console.print(message)

    if supervisor.is_running(settings):
        raise ConfigError(
            f"the platform of {settings.project_dir} is running.",
            "Stop it with `maquette down`: the soak starts it itself and kills its Redis.",
        )
    folder = bench_dir(settings) / "soak" / "predictions"
    shutil.rmtree(folder, ignore_errors=True)
    overrides = {
        "MAQUETTE_ORCHESTRATION_SCHEDULES": json.dumps(schedules or SCHEDULES),
        "MAQUETTE_PREDICTIONS_STREAM": SOAK_STREAM,
        "MAQUETTE_PREDICTIONS_FOLDER": str(folder),
    }
    # The supervisor and every component inherit this environment: their settings follow.
    with _environment(overrides):
        soak = load_settings(settings.project_dir)
        try:
            say("bringing the platform up ...")
            platform.up(soak, announce=lambda m: say(f"  {m}"))
            return _load_and_measure(soak, minutes, clients, rate, events_per_s, say)
        finally:
            say("taking the platform down ...")
            platform.down(soak)


def _load_and_measure(
    settings: Settings,
    minutes: float,
    clients: int,
    rate: float,
    events_per_s: float,
    say: Callable[[str], None],
) -> SoakResult:
    service = {s.name: s for s in platform.status(settings)}.get("service")
    if service is None or service.state != "running":
        raise ConfigError(
            "the prediction service is not ready: no @production model, or no service component.",
            "Train and promote a model first (`maquette demo --quick` leaves one).",
        )
    redis.Redis.from_url(redis_url(settings)).delete(SOAK_STREAM)  # an earlier soak's leftovers
    result = SoakResult(minutes, datetime.now(UTC), datetime.now(UTC))
    traffic = _Traffic(settings, str(service.url), clients, rate)
    events = _Events(settings, events_per_s)
    before = _processed(settings)
    say(f"traffic for {minutes:g} min: {rate:g} requests/s, {events_per_s:g} events/s ...")
    workers = [*traffic.threads(), events.thread()]
    for worker in workers:
        worker.start()
    length = minutes * 60
    began = time.monotonic()
    for i, name in enumerate(KILLED, start=1):
        _sleep_until(began + length * i / (len(KILLED) + 1))
        result.kills.append(_kill(settings, name))
        say(f"  killed {result.kills[-1]}")
    _sleep_until(began + length)
    traffic.stop.set()
    events.stop.set()
    for worker in workers:
        worker.join(30)
    result.ended = datetime.now(UTC)
    say("waiting for the scheduled drain to empty the prediction log ...")
    result.undrained = _wait_until_drained(settings, DRAIN_WAIT_S)
    _wait_until_up(settings, 120)
    traffic.fill(result)
    result.events_published, result.publish_failures = events.published, events.failures
    applied, rejected = _processed(settings)
    result.events_applied, result.events_rejected = applied - before[0], rejected - before[1]
    _reconcile(settings, traffic.acknowledged, result)
    statuses = platform.status(settings)
    result.restarts = {s.name: s.restarts for s in statuses}
    result.states = {s.name: s.state for s in statuses}
    say("waiting for the window's scheduled runs to finish ...")
    result.runs = _finished_runs(settings, result.started, result.ended, RUNS_WAIT_S)
    return result


@contextlib.contextmanager
def _environment(overrides: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.monotonic()))


def _kill(settings: Settings, name: str) -> str:
    """kill -9 a component's process, found through `status` (the supervisor's pid)."""
    pid = {s.name: s.pid for s in platform.status(settings)}.get(name)
    if pid is None:
        return f"{name}: not running, not killed"
    os.kill(pid, signal.SIGKILL)
    return f"{name} (pid {pid}) at {datetime.now(UTC):%H:%M:%S}"


def _wait_until_drained(settings: Settings, timeout_s: float) -> int:
    """Wait until the prediction stream is empty (the schedule drained it); what is left."""
    client = redis.Redis.from_url(redis_url(settings), socket_timeout=5)
    deadline, left = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            left = int(client.xlen(settings.predictions.stream))
            if left == 0:
                return 0
        time.sleep(2)
    return left


def _wait_until_up(settings: Settings, timeout_s: float) -> None:
    """Give the supervisor time to finish a restart still under way before reading `status`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(s.is_up for s in platform.status(settings)):
            return
        time.sleep(1)


def _finished_runs(
    settings: Settings, start: datetime, end: datetime, timeout_s: float
) -> list[DeploymentRuns]:
    """`scheduled_runs` once every run of the window has finished (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = scheduled_runs(settings, start, end)
        unfinished = any(s not in FINAL for r in runs for s in r.states)
        if not unfinished or time.monotonic() > deadline:
            return runs
        time.sleep(5)


def _processed(settings: Settings) -> tuple[int, int]:
    """The processor's committed totals: events applied, events dead-lettered."""
    try:
        found = stream_status(settings)
    except StoreUnavailable:
        return 0, 0
    return found.events, found.late + found.malformed


# ------------------------------------------------------------------ traffic and events


class _Traffic:
    """`clients` HTTP clients sending one real entity row per request, in turn to each model,
    at `rate` requests/s in all; every answer counted by status, acknowledged ids kept."""

    def __init__(self, settings: Settings, url: str, clients: int, rate: float) -> None:
        self.url, self.clients, self.interval = url, clients, clients / rate
        self.bodies = _request_bodies(settings)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: Counter[str] = Counter()
        self.acknowledged: list[str] = []
        key = settings.serving.api_key
        self.headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    def threads(self) -> list[threading.Thread]:
        return [
            threading.Thread(target=self._client, args=(i,), daemon=True)
            for i in range(self.clients)
        ]

    def _client(self, index: int) -> None:
        bodies = itertools.islice(itertools.cycle(self.bodies), index, None, self.clients)
        due = time.monotonic()
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            for body in bodies:
                if self.stop.is_set():
                    return
                try:
                    reply = client.post("/predict", json=body)
                    answer, ids = str(reply.status_code), []
                    if reply.status_code == 200:
                        ids = [p["prediction_id"] for p in reply.json()["predictions"]]
                except httpx.HTTPError as exc:  # no answer at all: counted by its kind
                    answer, ids = type(exc).__name__, []
                with self.lock:
                    self.answers[answer] += 1
                    self.acknowledged += ids
                due = max(due + self.interval, time.monotonic() - self.interval)
                time.sleep(max(0.0, due - time.monotonic()))

    def fill(self, result: SoakResult) -> None:
        result.answers = self.answers
        result.requests = sum(self.answers.values())
        result.acknowledged = len(self.acknowledged)


def _request_bodies(settings: Settings) -> list[dict[str, Any]]:
    """Requests of real entity rows of the demo's replay period, each as of its own time, in
    turn for every declared model."""
    layer = FeatureLayer(settings)
    names = list(settings.models)
    fields = list(dict.fromkeys(f for n in names for f in request_fields(settings, layer, n)))
    start, end = replay_period(settings)
    column = settings.model_spec(names[0]).timestamp_column
    rows = replay.entity_rows(settings, names[0], start, end).dropna(subset=fields)
    alias = settings.serving.default_alias
    bodies = []
    for i, (record, when) in enumerate(
        zip(rows[fields].to_dict("records"), rows[column], strict=True)
    ):
        row = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in record.items()}
        model = f"{names[i % len(names)]}@{alias}"
        bodies.append({"rows": [row], "model": model, "as_of": when.isoformat()})
    return bodies


class _Events:
    """Real events of the demo's replay period published to the stream at a steady rate; a
    batch Redis refuses is counted and sent again."""

    def __init__(self, settings: Settings, per_s: float) -> None:
        self.settings, self.per_s = settings, per_s
        start, end = replay_period(settings)
        con = duckdb_connection(quiet=True)
        self.events = con.sql(events_sql(settings, start, end)).to_arrow_table().to_pylist()
        self.stop = threading.Event()
        self.published = self.failures = 0

    def thread(self) -> threading.Thread:
        return threading.Thread(target=self._publish, daemon=True)

    def _publish(self) -> None:
        batch = max(1, int(self.per_s / 2))  # two batches a second
        pending = iter(self.events)
        chunk = list(itertools.islice(pending, batch))
        while chunk and not self.stop.wait(0.5):
            try:
                publish(self.settings, chunk)
            except StoreUnavailable:
                self.failures += 1
                continue
            self.published += len(chunk)
            chunk = list(itertools.islice(pending, batch))


# ------------------------------------------------------------------ measuring


def _reconcile(settings: Settings, acknowledged: list[str], result: SoakResult) -> None:
    """Acknowledged ids against the RAW Parquet files (no de-duplication): lost, doubled, extra."""
    folder = settings.path(settings.predictions.folder)
    logged: Counter[str] = Counter()
    for path in sorted(folder.glob("date=*/model=*/*.parquet")):
        logged.update(pq.read_table(path, columns=["prediction_id"])["prediction_id"].to_pylist())
    sent = Counter(acknowledged)
    result.lost = sum(1 for i in sent if logged[i] == 0)
    result.duplicated = sum(1 for i in sent if logged[i] > 1)
    result.extra = sum(1 for i in logged if i not in sent)


def cron_ticks(cron: str, timezone: str, start: datetime, end: datetime) -> int:
    """How many times `cron` fires in [start, end), as Prefect's scheduler reads it."""
    from prefect.server.schemas.schedules import CronSchedule

    schedule = CronSchedule(cron=cron, timezone=timezone)
    dates = asyncio.run(schedule.get_dates(n=10_000, start=start, end=end))
    return sum(1 for d in dates if start <= d < end)


def scheduled_runs(settings: Settings, start: datetime, end: datetime) -> list[DeploymentRuns]:
    """Per scheduled deployment: cron ticks in [start, end), and the runs the scheduler created
    for that window, by state (from the platform's Prefect API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )

    api_url = platform_prefect_url(settings, timeout_s=5)
    if api_url is None:
        return []
    found = []
    window = FlowRunFilterExpectedStartTime(after_=start, before_=end - timedelta(microseconds=1))
    with platform_prefect(settings, api_url), get_client(sync_client=True) as client:
        for deployment in client.read_deployments(limit=200):
            crons = tuple(str(s.schedule.cron) for s in deployment.schedules)  # type: ignore[union-attr]
            if not crons:
                continue
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(expected_start_time=window),
                limit=200,  # the API's largest page; a soak of hours would need paging
            )
            states = Counter(
                str(r.state.name) if r.state else "Unknown" for r in runs if _by_scheduler(r)
            )
            flow = client.read_flow(deployment.flow_id).name
            tz = settings.orchestration.timezone
            ticks = sum(cron_ticks(c, tz, start, end) for c in crons)
            found.append(DeploymentRuns(f"{flow}/{deployment.name}", crons, ticks, dict(states)))
    return sorted(found, key=lambda r: r.name)


def _by_scheduler(run: Any) -> bool:
    return bool(run.auto_scheduled) or getattr(run.created_by, "type", None) == "SCHEDULE"


# ------------------------------------------------------------------ the report


def soak_table(result: SoakResult, console: Console) -> str:
    """Print the soak's figures as tables; return them as Markdown."""
    window = f"{result.started:%H:%M:%S}-{result.ended:%H:%M:%S} UTC"
    schedules = [
        (
            r.name,
            " ".join(r.crons),
            str(r.ticks),
            str(r.completed),
            ", ".join(f"{n} {s}" for s, n in sorted(r.states.items())) or "none",
        )
        for r in result.runs
        if r.ticks or r.states
    ]
    first = results_table(
        console,
        f"soak {result.minutes:g} min ({window}): scheduled runs vs cron ticks",
        ("deployment", "cron", "ticks", "completed", "runs by state"),
        schedules,
    )
    components = [
        (name, str(result.restarts.get(name, 0)), result.states.get(name, "?"))
        for name in result.states
    ]
    second = results_table(
        console,
        "restarts by the supervisor",
        ("component", "restarts", "state at the end"),
        components,
    )
    answers = ", ".join(f"{code}: {n:,}" for code, n in sorted(result.answers.items()))
    figures = [
        ("killed (kill -9)", "; ".join(result.kills)),
        ("requests", f"{result.requests:,} ({answers})"),
        ("acknowledged predictions (200)", f"{result.acknowledged:,}"),
        ("lost / duplicated in raw Parquet", f"{result.lost} / {result.duplicated}"),
        ("in Parquet, never acknowledged", f"{result.extra:,}"),
        ("left undrained after the wait", f"{result.undrained:,}"),
        (
            "events published / applied / dead-lettered",
            f"{result.events_published:,} / {result.events_applied:,} / "
            f"{result.events_rejected:,} ({result.publish_failures} batches refused by Redis, "
            "sent again)",
        ),
    ]
    third = results_table(console, "traffic and reconciliation", ("", "figure"), figures)
    return "\n\n".join((first, second, third)) + "\n"
