"""The README's main job, end to end, in a fresh project folder (slow).

The quick demo runs once for the module (~4 minutes); each test reads what it printed and what it
left behind: the stages, the figures of its summary (events, requests, predictions logged, skew),
and the schedules it held paused from before the deployments started until the replay ended.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from maquette.config import Settings, load_settings
from tests.conftest import free_port, make_project
from tests.e2e.test_schedules_fire import MATERIALIZE, scheduled_runs
from tests.test_platform import wait_for

# The demo's own limit, as a subprocess; each test that waits for it has a pytest timeout of its
# own above it (the setup of the module's demo counts towards the first test's timeout).
DEMO_TIMEOUT_S = 1200
AFTER_DEMO_S = 300  # `status`, `models show`, waiting for the released schedule, `down`
DEMO_TIMEOUT = pytest.mark.timeout(DEMO_TIMEOUT_S + AFTER_DEMO_S)
MODELS = ("flight_delay", "late_arrival")


@dataclass(frozen=True)
class DemoRun:
    """A finished `maquette demo --quick`: its project, environment and printed output."""

    project: Path
    settings: Settings
    env: dict[str, str]
    bentoml: Path
    out: str


def _maquette(project: Path, env: dict[str, str], *args: str, timeout: int = 120) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "maquette", *args, "--project", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory, running_redis: str) -> Iterator[DemoRun]:
    tmp_path = tmp_path_factory.mktemp("demo")
    # Its own Redis database and ports: the platform it starts must not meet the other tests'.
    project = make_project(
        tmp_path / "fresh",
        running_redis.rsplit("/", 1)[0] + "/7",
        orchestration={
            "prefect_port": free_port(),
            "runner_port": free_port(),
            # materialize due every minute: unless held, it would fire while the demo trains
            # and replays. Monitoring on demand only, so no scheduled pass meets the demo's own.
            "schedules": {
                "materialize": "* * * * *",
                "drain": "* * * * *",
                "monitor": None,
                "batch_predict": "0 6 * * *",
                "train": "0 3 * * 0",
            },
        },
        serving={"port": free_port()},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAQUETTE_")}
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")  # a fresh machine has an empty model store
    env["COLUMNS"] = "400"  # one summary line per figure: rich wraps at 80 columns otherwise
    try:
        out = _maquette(project, env, "demo", "--quick", timeout=DEMO_TIMEOUT_S)
        yield DemoRun(project, load_settings(project), env, tmp_path / "bentoml", out)
    finally:
        subprocess.run(
            [sys.executable, "-m", "maquette", "down", "--project", str(project)],
            env=env,
            timeout=180,
            check=False,
            capture_output=True,
        )


def _number(pattern: str, out: str) -> int:
    """The integer (thousands separated by commas) in the summary line matching `pattern`."""
    found = re.search(pattern, out)
    assert found, f"no line matching {pattern!r} in the demo's output:\n{out[-4000:]}"
    return int(found.group(1).replace(",", ""))


@pytest.mark.slow
@DEMO_TIMEOUT
def test_quick_demo_runs_the_whole_lifecycle_from_a_fresh_project(quick_demo: DemoRun) -> None:
    out, project, env = quick_demo.out, quick_demo.project, quick_demo.env
    for stage in (
        "start Redis and Prefect",
        "load offline store",
        "feast apply",
        "start deployments, stream processor and service",
        "materialize to Redis",
        "train flight_delay",
        "train late_arrival",
        "prediction service ready",
        "replay 2013-12-01 to 2013-12-03",
        "stream processor's offline rows committed",
        "drain prediction log",
        "monitor",
        "console ready",
    ):
        assert stage in out, stage
    assert "336,776 rows" in out and "327,346 with a label" in out
    assert "live accuracy per day" in out and "2013-12-01" in out and "2013-12-02" in out
    assert "drift flight_delay:v1" in out and "incidents:" in out
    assert "where to look" in out and "evidently ui --workspace" in out
    state = project / ".maquette"
    assert (state / "reports" / "monitoring" / "index.html").is_file()
    for name in MODELS:
        # The demo registered v1 of each model in its own store and promoted it.
        aliases = json.loads((state / "aliases.json").read_text())["aliases"]
        assert aliases[name]["production"] == "v1"
        record = json.loads(
            (quick_demo.bentoml / "models" / name / "v1" / "record.json").read_text()
        )
        assert record["baseline"]["beats_baseline"], record["baseline"]
    # flight_delay uses the streaming features the speed layer fed during the replay.
    names = json.loads(
        (quick_demo.bentoml / "models" / "flight_delay" / "v1" / "record.json").read_text()
    )["feature_names"]
    assert "origin_dep_delay_60m" in names and "carrier_dep_delay_60m" in names, names
    status = _maquette(project, env, "status")
    assert "running" in status
    shown = _maquette(project, env, "models", "show", "flight_delay@production")
    assert "partitions" in shown


@pytest.mark.slow
@DEMO_TIMEOUT
def test_quick_demo_sent_its_events_through_the_stream_and_the_processor_kept_up(
    quick_demo: DemoRun,
) -> None:
    out = quick_demo.out
    assert _number(r"([\d,]+) events through the\s+stream", out) > 0
    # At every slot the processor applied the events within the wait: no warning saying not.
    assert "the stream processor had not applied the events" not in out, out[-4000:]


@pytest.mark.slow
@DEMO_TIMEOUT
def test_quick_demo_answered_every_request_and_every_prediction_reached_parquet(
    quick_demo: DemoRun,
) -> None:
    out = quick_demo.out
    entity_rows = _number(r"([\d,]+) entity rows", out)
    requests = _number(r"([\d,]+) HTTP requests to the service", out)
    failed = _number(r"HTTP requests to the service, (\d+) failed", out)
    logged = _number(r"([\d,]+) predictions logged and drained to Parquet", out)
    assert entity_rows > 0 and requests > 0 and failed == 0, (entity_rows, requests, out[-4000:])
    # Every row went to every model, and each answer was logged, then drained, once.
    assert logged == entity_rows * len(MODELS), (logged, entity_rows)
    folder = quick_demo.settings.path(quick_demo.settings.predictions.folder)
    on_disk = {
        i
        for f in folder.rglob("*.parquet")
        for i in pq.read_table(f, columns=["prediction_id"]).column(0).to_pylist()
    }
    assert len(on_disk) == logged


@pytest.mark.slow
@DEMO_TIMEOUT
def test_quick_demo_served_features_equal_the_offline_ones(quick_demo: DemoRun) -> None:
    skews = re.findall(
        r"skew (\w+):v\d+: worst feature mismatch ([\d.]+)% on ([\d,]+) sampled predictions",
        quick_demo.out,
    )
    assert {name for name, _, _ in skews} == set(MODELS), quick_demo.out[-4000:]
    for name, worst, rows in skews:
        assert float(worst) == 0 and int(rows.replace(",", "")) > 0, (name, worst, rows)


@pytest.mark.slow
@DEMO_TIMEOUT
def test_quick_demo_held_the_materialize_schedule_until_the_replay_ended(
    quick_demo: DemoRun,
) -> None:
    found = re.search(r"until the replay ended: (.+); resumed at (\S+)", quick_demo.out)
    assert found, quick_demo.out[-4000:]
    assert found.group(1).split(", ") == [MATERIALIZE, "monitor/models"]
    resumed = datetime.fromisoformat(found.group(2))
    settings = quick_demo.settings
    # Due every minute for the whole demo, it got runs only once released.
    wait_for(lambda: scheduled_runs(settings, MATERIALIZE), 120, "materialize's scheduled runs")
    early = [r for r in scheduled_runs(settings, MATERIALIZE) if r.created < resumed]
    assert not early, f"materialize runs created before the replay ended at {resumed}: {early}"


def test_the_demo_tests_own_timeout_outlasts_the_demo_and_the_global_one(
    request: pytest.FixtureRequest,
) -> None:
    # pytest's global timeout (pyproject) would otherwise stop the demo at 600 s, long before
    # its own limit; every test that waits for the demo must carry a longer one of its own.
    module = request.node.parent
    waiting = [item for item in module.collect() if "quick_demo" in item.fixturenames]
    assert len(waiting) == 5, waiting
    global_timeout = float(request.config.getini("timeout"))
    for item in waiting:
        mark = item.get_closest_marker("timeout")
        assert mark is not None, f"{item.name} has only the global timeout, {global_timeout} s"
        own = float(mark.args[0])
        assert own > DEMO_TIMEOUT_S > global_timeout, (item.name, own, global_timeout)
