"""`maquette up / status / down` with real processes: Redis, a Prefect server, the deployments'
runner, the BentoML service and the stream processor."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pyarrow.parquet as pq
import pytest
import redis
from typer.testing import CliRunner

from maquette.cli import app
from maquette.config import Settings, load_settings
from maquette.data.redis_server import redis_url
from maquette.errors import ComponentFailed
from maquette.platform import components as platform
from maquette.serving.prediction_log import PredictionLog
from tests.conftest import free_port, make_project

runner = CliRunner()
# Rare schedules (1 January), each different, so no run fires during the test and each
# deployment's schedule shows which setting it came from; monitor runs on demand only.
SCHEDULES = {
    "materialize": "0 1 1 1 *",
    "drain": "0 2 1 1 *",
    "monitor": None,
    "batch_predict": "0 4 1 1 *",
    "train": "0 5 1 1 *",
}
COMPONENTS = ["redis", "prefect", "deployments", "stream", "console"]


def _pid(settings: Settings, name: str) -> int:
    found = {s.name: s.pid for s in platform.status(settings)}[name]
    assert found is not None
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may linger when pid 1 does not reap)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _states(settings: Settings) -> dict[str, str]:
    return {s.name: s.state for s in platform.status(settings)}


def wait_for(
    condition: Callable[[], object], seconds: float, what: str | Callable[[], str]
) -> None:
    """Poll until the condition holds; fail saying what was awaited (`what`, or what it
    returns then) when the time is up."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            raise AssertionError(f"waited {seconds:.0f}s for {said}")
        time.sleep(0.5)


def logged_entry(prediction_id: str) -> dict[str, object]:
    """A prediction-log entry as the service writes it (`PredictionLog.append` takes these)."""
    now = datetime.now(UTC).isoformat()
    return {
        "prediction_id": prediction_id,
        "logged_at": now,
        "request_time": now,
        "model": "flight_delay",
        "version": "v1",
        "partition": None,
        "shadow": False,
        "prediction": 12.5,
        "decision": None,
        "latency_ms": 1.0,
        "entity": {"origin": "JFK"},
        "request": {},
        "features": {},
        "missing": [],
        "stale": [],
    }


def log_predictions(settings: Settings, count: int) -> list[str]:
    """`count` predictions logged into the project's Redis; their ids."""
    ids = [uuid.uuid4().hex for _ in range(count)]
    PredictionLog(settings).append([logged_entry(i) for i in ids])
    return ids


def drained_ids(settings: Settings) -> list[str]:
    """Prediction ids in the project's Parquet files (copies included)."""
    files = sorted(settings.path(settings.predictions.folder).rglob("*.parquet"))
    return [
        i for f in files for i in pq.read_table(f, columns=["prediction_id"]).column(0).to_pylist()
    ]


@pytest.fixture
def platform_project(tmp_path: Path) -> Iterator[Settings]:
    """A fresh project with its own embedded Redis and Prefect ports; stopped afterwards."""
    folder = make_project(
        tmp_path / "project",
        None,
        # `always`: Redis is SIGKILLed below and must keep every acknowledged write; with
        # `everysec` a slow fsync may leave the last writes unwritten (README, "What survives").
        redis={"port": free_port(), "appendfsync": "always"},
        orchestration={
            "prefect_port": free_port(),
            "runner_port": free_port(),
            "components": COMPONENTS,
            "schedules": SCHEDULES,
        },
    )
    settings = load_settings(folder)
    # The stream processor needs the feature views it pushes to. In a process of its own: the
    # feature repo's modules, once imported, keep the paths of the first project that imported
    # them (the session's loaded project).
    apply = [sys.executable, "-m", "maquette", "features", "apply", "--project", str(folder)]
    subprocess.run(apply, check=True, capture_output=True)
    try:
        yield settings
    finally:
        platform.down(settings)


def _served_deployments(settings: Settings) -> dict[str, list[str | None]]:
    """FLOW/DEPLOYMENT -> cron schedules, as the platform's Prefect server has them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import DeploymentSort

    with platform.prefect_api(settings), get_client(sync_client=True) as client:
        found = client.read_deployments(limit=100, sort=DeploymentSort.NAME_ASC)
        return {
            f"{client.read_flow(d.flow_id).name}/{d.name}": [s.schedule.cron for s in d.schedules]  # type: ignore[union-attr]
            for d in found
        }


@pytest.mark.slow
def _niceness(pid: int | None) -> int:
    assert pid is not None
    # /proc/PID/stat after the command: state is field 3, nice field 19.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _environ(pid: int | None) -> dict[str, str]:
    assert pid is not None
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


@pytest.mark.timeout(900)  # up, two drains, every component's restart (up to 240 s), down
def test_up_starts_everything_and_a_killed_component_is_reported_and_restarted(
    platform_project: Settings,
) -> None:
    settings = platform_project
    began = time.monotonic()
    started = platform.up(settings)
    print(f"up: {time.monotonic() - began:.1f}s")
    assert [(s.name, s.state) for s in started] == [(n, "running") for n in COMPONENTS]
    for s in started:
        if s.name != "redis":
            assert (settings.state_dir / "logs" / f"{s.name}.log").is_file()
            assert s.url is None or s.url.startswith("http://127.0.0.1:")

    # Every flow deployed once (per model for batch_predict and train), schedules from settings.
    models = sorted(settings.models)
    assert _served_deployments(settings) == {
        "materialize/incremental": ["0 1 1 1 *"],
        "drain/prediction-log": ["0 2 1 1 *"],
        "monitor/models": [],
        **{f"batch_predict/{m}": ["0 4 1 1 *"] for m in models},
        **{f"train/{m}": ["0 5 1 1 *"] for m in models},
    }
    # The runner executes a run started through the API, against the project's own Redis:
    # predictions logged the way the service logs them reach Parquet.
    logged = log_predictions(settings, 20)
    run = platform.run_deployment(settings, "drain/prediction-log", timeout_s=120)
    assert run.state.is_completed(), run.state
    assert sorted(drained_ids(settings)) == sorted(logged)
    # Scheduled batch work yields the CPU to the online path: the runner (and the flow runs it
    # starts, its children) runs at orchestration.flow_run_niceness, the stream processor at 0.
    assert _niceness(_pid(settings, "deployments")) == settings.orchestration.flow_run_niceness
    assert _niceness(_pid(settings, "stream")) == 0
    # The Python processes that load Feast skip its import-time type instrumentation
    # (orchestration.optimize_python); the drain above ran so, children included.
    # (The service's command is checked in tests/test_config.py.)
    for name in ("deployments", "stream"):
        assert _environ(_pid(settings, name)).get("PYTHONOPTIMIZE") == "1", name
    assert "PYTHONOPTIMIZE" not in _environ(_pid(settings, "prefect"))

    # The console is one of the components: its pages answer from the project's own state.
    console = f"http://{settings.console.host}:{settings.console.port}"
    home = httpx.get(console, timeout=30)
    assert home.status_code == 200 and "<td>deployments</td>" in home.text
    assert "drain/prediction-log" in home.text  # the schedules, read from Prefect
    # It sees itself running (its page checks its own /healthz while answering).
    assert re.search(r'<td>console</td>\s*<td class="ok">running</td>', home.text), home.text
    assert "PYTHONOPTIMIZE" in _environ(_pid(settings, "console"))

    # A second `up` leaves the running components alone.
    pids = {n: _pid(settings, n) for n in COMPONENTS}
    again = runner.invoke(app, ["up", "--project", str(settings.project_dir)])
    assert again.exit_code == 0, again.output
    assert "starting" not in again.output
    assert {n: _pid(settings, n) for n in COMPONENTS} == pids

    # What Redis acknowledged before it is killed: a key, and predictions not yet drained.
    store = redis.Redis.from_url(redis_url(settings))
    marker = uuid.uuid4().hex
    store.set("maquette:test:before-the-kill", marker)
    pending = log_predictions(settings, 20)

    # Killed with -9, each component is brought back by the supervisor, nobody typing a
    # command (the stream processor waits for Redis, the runner for Prefect), each restart
    # counted, and the deployments are still there.
    killed = list(COMPONENTS)  # all at once: each waits for what it needs, nothing exits for good
    for name in killed:
        os.kill(pids[name], signal.SIGKILL)
    wait_for(
        lambda: all(
            s.state == "running" and s.pid != pids[s.name]
            for s in platform.status(settings)
            if s.name in killed
        ),
        seconds=240,
        what=lambda: f"every killed component running again: {platform.status(settings)}",
    )
    after = {s.name: s for s in platform.status(settings)}
    for name in killed:
        assert after[name].restarts == 1 and "SIGKILL" in str(after[name].last_exit), after[name]
    assert len(_served_deployments(settings)) == 3 + 2 * len(models)
    # Redis came back from its append-only file with everything it had acknowledged, and the
    # restarted runner drains the predictions logged before the kill.
    store = redis.Redis.from_url(redis_url(settings))  # the old connection died with it
    assert store.get("maquette:test:before-the-kill") == marker.encode()
    run = platform.run_deployment(settings, "drain/prediction-log", timeout_s=120)
    assert run.state.is_completed(), run.state
    assert sorted(drained_ids(settings)) == sorted(logged + pending)
    shown = runner.invoke(app, ["status", "--project", str(settings.project_dir)])
    assert shown.exit_code == 0 and "SIGKILL" in shown.output, shown.output

    # `down` stops everything, children included, and frees the ports.
    leaders = [_pid(settings, n) for n in COMPONENTS]
    family = leaders + [c.pid for p in leaders for c in psutil.Process(p).children(True)]
    stopped = runner.invoke(app, ["down", "--project", str(settings.project_dir)])
    assert stopped.exit_code == 0, stopped.output
    assert set(_states(settings).values()) == {"stopped"}
    assert not any(_running(p) for p in family)
    for port in (settings.orchestration.prefect_port, settings.orchestration.runner_port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            sock.bind(("127.0.0.1", port))  # nothing listens there any more
    shown = runner.invoke(app, ["status", "--project", str(settings.project_dir)])
    assert shown.exit_code == 1 and "stopped" in shown.output


def test_status_of_a_project_never_started_says_stopped(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "project", None, redis={"port": free_port()})
    states = _states(load_settings(folder))
    # postgres only with orchestration.database: postgresql (SQLite here, the default)
    assert states == {n: "stopped" for n in platform.COMPONENTS if n != "postgres"}


def test_an_unknown_component_is_a_config_error_listing_the_known_ones(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "project", None)
    result = runner.invoke(app, ["status", "--component", "kafka", "--project", str(folder)])
    assert result.exit_code == 2 and "redis, postgres, prefect, deployments" in result.output


def test_deployments_follow_the_settings_and_skip_missing_flows(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from maquette.platform.deployments import flow_deployments

    folder = make_project(
        tmp_path / "project",
        None,
        orchestration={"schedules": {"drain": "*/5 * * * *"}, "batch_output": "scored"},
    )
    settings = load_settings(folder)
    built = {f"{d.flow_name}/{d.name}": d for d in flow_deployments(settings)}
    assert [s.schedule.cron for s in built["drain/prediction-log"].schedules] == ["*/5 * * * *"]
    assert [s.schedule.cron for s in built["materialize/incremental"].schedules] == ["0 * * * *"]
    # One drain at a time, and one due while another runs is cancelled, not queued behind it.
    drain_limit = built["drain/prediction-log"].concurrency_options
    assert built["drain/prediction-log"].concurrency_limit == 1
    assert drain_limit is not None and drain_limit.collision_strategy == "CANCEL_NEW"
    monitor_limit = built["monitor/models"].concurrency_options
    assert monitor_limit is not None and monitor_limit.collision_strategy == "ENQUEUE"
    # No path or SQL parameters: the flows read them from the settings.
    assert built["train/flight_delay"].parameters == {"name": "flight_delay"}
    assert built["batch_predict/late_arrival"].parameters == {"model": "late_arrival@production"}

    # Flows come from the project's flows folder only: one it lacks is skipped with a warning.
    for name in ("materialize", "monitor", "batch_predict", "train"):
        (folder / "flows" / f"{name}.py").unlink()
    only = flow_deployments(settings)
    assert [f"{d.flow_name}/{d.name}" for d in only] == ["drain/prediction-log"]
    # Prefect's handler writes to stderr, unless pytest's log capture got the logger first.
    assert f"{folder.resolve() / 'flows' / 'train.py'} not found" in (
        caplog.text + capfd.readouterr().err
    )


def test_up_without_the_runner_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "project", None)
    (folder / "flows" / "deployments.py").unlink()
    result = runner.invoke(app, ["up", "--component", "deployments", "--project", str(folder)])
    assert result.exit_code == 2, result.output
    assert "no flow file" in result.output and "paths.flows" in result.output
    assert not (folder / ".maquette" / "run" / "supervisord.conf").exists()


def test_up_without_the_bento_service_fails_before_starting_anything(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "project", None)
    (folder / "bentos" / "service.py").unlink()
    result = runner.invoke(app, ["up", "--project", str(folder)])
    assert result.exit_code == 2, result.output
    assert "no BentoML service" in result.output and "paths.bentos" in result.output
    # Nothing was started: no supervisor, so nothing is left running.
    assert not (folder / ".maquette" / "run" / "supervisord.conf").exists()


@pytest.mark.slow
def test_the_service_component_answers_ready_with_production_models(
    production: dict[str, str], loaded_project: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The supervisor's components read the project's settings from its folder and MAQUETTE_*.
    monkeypatch.setenv("MAQUETTE_SERVING_PORT", str(free_port()))
    settings = load_settings(loaded_project.project_dir)
    try:
        began = time.monotonic()
        (service,) = platform.up(settings, ["service"])
        print(f"service up: {time.monotonic() - began:.1f}s")
        assert (
            service.state == "running"
            and service.url == f"http://127.0.0.1:{settings.serving.port}"
        )
        group = [p.pid for p in psutil.Process(service.pid).children(recursive=True)]

        # Its leader killed, the supervisor restarts it, and the restart first stops the old
        # BentoML workers (they live in sessions of their own and would keep the port).
        os.kill(service.pid, signal.SIGKILL)
        wait_for(
            lambda: (
                _states(settings)["service"] == "running" and not any(_running(p) for p in group)
            ),
            seconds=120,
            what="the service running again with none of its old workers left",
        )
        again = {s.name: s for s in platform.status(settings)}["service"]
        assert again.pid != service.pid and again.restarts == 1
    finally:
        platform.down(settings)
    assert _states(settings)["service"] == "stopped"


def test_a_component_that_keeps_failing_to_start_is_given_up_and_reported(
    tmp_path: Path,
) -> None:
    folder = make_project(
        tmp_path / "project",
        None,
        redis={"port": free_port()},
        orchestration={"components": ["redis", "stream"], "start_retries": 1, "settle_s": 2},
        stream={"definition": "no_such_module:EVENTS"},  # the processor exits at once
    )
    settings = load_settings(folder)
    try:
        # `up` may see the processor alive before its first crash; the supervisor and the
        # launcher then restart it, with a delay, until they give it up.
        with contextlib.suppress(ComponentFailed):
            platform.up(settings)
        wait_for(lambda: _states(settings)["stream"] == "gave up", 120, "the stream to be given up")
        assert _states(settings) == {"redis": "running", "stream": "gave up"}
        (stream,) = platform.status(settings, ["stream"])
        assert stream.restarts >= 1 and "gave up" in str(stream.last_exit), stream
        shown = runner.invoke(app, ["status", "--project", str(folder)])
        assert shown.exit_code == 1 and "gave up" in shown.output
    finally:
        platform.down(settings)
    assert set(_states(settings).values()) == {"stopped"}


def test_demo_without_a_replay_period_is_a_config_error_saying_what_to_set(
    tmp_path: Path,
) -> None:
    from maquette.errors import ConfigError
    from maquette.platform.demo import replay_period

    folder = make_project(tmp_path / "project", None, demo={"replay_end": None})
    with pytest.raises(ConfigError, match=r"demo\.replay_start and demo\.replay_end"):
        replay_period(load_settings(folder))


def test_a_quick_demo_replays_quick_days_from_the_replay_start(tmp_path: Path) -> None:
    from maquette.platform.demo import replay_period

    settings = load_settings(make_project(tmp_path / "project", None, demo={"quick_days": 2}))
    start, end = replay_period(settings, quick=True)
    assert (start, end - start) == (settings.demo.replay_start, timedelta(days=2))
    assert replay_period(settings) == (settings.demo.replay_start, settings.demo.replay_end)


def test_up_never_stops_a_redis_on_its_port_that_is_another_projects(tmp_path: Path) -> None:
    from maquette.data import redis_server

    port = free_port()
    first = load_settings(make_project(tmp_path / "first", None, redis={"port": port}))
    second = load_settings(
        make_project(
            tmp_path / "second", None, redis={"port": port}, orchestration={"components": ["redis"]}
        )
    )
    url = redis_server.ensure_redis(first)  # started by hand, as `maquette redis start` does
    try:
        with pytest.raises(ComponentFailed, match="a Redis that is not this project's"):
            platform.up(second)
        assert redis_server.ping(url)  # the first project's Redis still runs
        (shown,) = platform.status(second, ["redis"])
        assert shown.state == "stopped" and "not with this project's Redis" in shown.detail
    finally:
        platform.down(second)
        redis_server.stop(first)


def test_holding_schedules_raises_when_the_server_does_not_answer_or_a_name_is_malformed(
    tmp_path: Path,
) -> None:
    import httpx

    from maquette.platform.schedules import held_schedules

    folder = make_project(tmp_path / "project", None, orchestration={"prefect_port": free_port()})
    settings = load_settings(folder)
    # Only a deployment the server does not know is skipped: a server that does not answer
    # cannot pause anything, and the demo must not go on as if it had.
    with (
        pytest.raises(httpx.ConnectError),
        platform.schedules_paused(settings, ["materialize/incremental"]),
    ):
        pytest.fail("schedules held without a Prefect server to pause them on")
    with (
        pytest.raises(ValueError, match="Invalid deployment name format: materialize"),
        platform.schedules_paused(settings, ["materialize"]),
    ):
        pytest.fail("a malformed deployment name was skipped")
    assert held_schedules(settings) == set()  # nothing is left held for a runner to read


def test_a_stream_processor_that_does_not_keep_up_is_reported_in_the_demo_summary(
    loaded_project: Settings, running_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from maquette.cli.render_demo import demo_summary
    from maquette.features.layer import FeatureLayer
    from maquette.platform.demo import DemoReport
    from maquette.platform.traffic import TrafficReport, publish_events

    # Its own Redis database: no stream processor reads the stream there, and the online
    # store is empty, so the events published are never applied.
    url = running_redis.rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("MAQUETTE_REDIS_URL", url)
    settings = load_settings(loaded_project.project_dir)
    start = datetime(2013, 12, 2, 14, tzinfo=UTC)  # 9 am in New York: departures
    try:
        published = publish_events(
            settings, FeatureLayer(settings), start, start + timedelta(hours=1), timeout_s=0.5
        )
    finally:
        redis.Redis.from_url(url).flushdb()
    assert published.events > 0 and not published.caught_up, published

    console = Console(record=True, width=400)
    traffic = TrafficReport(start, start + timedelta(hours=1), stream_behind=1)
    demo_summary(console, DemoReport(traffic=traffic))
    shown = console.export_text()
    assert "WARNING the stream processor had not applied the events within 30 s at 1 of" in shown


def test_the_replay_publishes_each_slots_events_once_as_a_query_per_slot_would(
    loaded_project: Settings,
) -> None:
    from maquette.features.layer import FeatureLayer
    from maquette.platform.traffic import StreamFollower, TrafficReport, historical_events

    start = datetime(2013, 12, 2, 10, tzinfo=UTC)
    end = start + timedelta(hours=6)
    follower = StreamFollower(
        loaded_project, FeatureLayer(loaded_project), (start, end), TrafficReport(start, end)
    )
    clocks = [start + timedelta(minutes=m) for m in (0, 60, 90, 90, 200, 360)]
    published = 0
    for before, clock in itertools.pairwise(clocks):
        due = follower.due(clock)
        assert due.equals(historical_events(loaded_project, before, clock)), clock
        published += due.num_rows
    assert published == historical_events(loaded_project, start, end).num_rows > 0
