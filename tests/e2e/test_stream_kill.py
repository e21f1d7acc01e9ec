"""kill -9 the stream processor mid-stream, start it again: every value as if it never died (slow)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import redis

from maquette.config import Settings, load_settings
from maquette.examples.nycflights13.stream import DEPARTURES
from maquette.features.layer import FeatureLayer
from maquette.stream.events import publish
from maquette.stream.history import events_sql
from maquette.stream.operations import reset, status
from tests.conftest import ROOT, make_project
from tests.test_stream import DAY, apply_own_repo

pytestmark = pytest.mark.slow


def _processor(project: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "maquette", "stream", "run", "--until-idle", "3"]
    return subprocess.Popen(
        [*command, "--project", str(project)],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_killed_processor_resumes_without_losing_or_double_counting(
    tmp_path: Path, running_redis: str, loaded_project: Settings
) -> None:
    project = make_project(
        tmp_path / "p",
        running_redis,
        feast={"project": "stream_kill"},
        stream={
            "stream": "kill:departures",
            "dead_letter": "kill:departures:dead",
            "events_source": None,
            "backfill_before": None,
            "batch": 100,
            "commit_interval_s": 1.0,
        },
    )
    settings = load_settings(project)
    apply_own_repo(settings)
    reset(settings)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    sql = events_sql(loaded_project, DAY, DAY.replace(day=11))
    events = con.sql(sql).to_arrow_table().to_pylist()
    bad = [{**events[i], "dep_delay": "n/a"} for i in range(0, len(events), 997)]
    assert len(events) > 8_000

    log = tmp_path / "processor.log"
    first = _processor(project, log)
    client = redis.Redis.from_url(running_redis)
    _wait(lambda: client.exists("kill:departures"), 60, "the processor's consumer group")
    chunks = [events[i : i + 100] for i in range(0, len(events), 100)]
    for i, chunk in enumerate(chunks):
        publish(settings, chunk + (bad[i : i + 1] if i < len(bad) else []))
        time.sleep(0.02)
        if status(settings).events >= len(events) * 0.3:
            break
    time.sleep(0.5)  # mid-way between two commits: entries read and pushed, not acknowledged
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    killed_at = status(settings)
    assert 0 < killed_at.events < len(events) and killed_at.pending > 0, killed_at
    for chunk in chunks[i + 1 :]:
        publish(settings, chunk)
    publish(settings, bad[i + 1 :])

    second = _processor(project, log)
    assert second.wait(120) == 0, log.read_text()[-2_000:]
    assert "redelivered" in log.read_text()
    done = status(settings)
    assert (done.events, done.malformed, done.late) == (len(events), len(bad), 0)
    assert (done.pending, done.undelivered, done.dead_letters) == (0, 0, len(bad))

    con.register("sent", pa.Table.from_pylist(events))
    layer = FeatureLayer(settings)
    for agg in DEPARTURES.aggregations:
        expected = con.sql(agg.backfill_sql("SELECT * FROM sent", DEPARTURES.event_time)).fetchall()
        path = settings.offline_store / f"{agg.view}.parquet"
        assert con.sql(f"SELECT * FROM read_parquet('{path}') ORDER BY 1, 2").fetchall() == expected
        newest = {row[0]: row[2:] for row in expected}  # the last row per key wins
        online = layer.online_features(
            [{agg.key: k} for k in newest], [f"{agg.view}:{n}" for n in agg.feature_names]
        )
        assert [tuple(v.values()) for v in online.values] == list(newest.values())
