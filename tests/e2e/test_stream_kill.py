"""kill -9 the stream processor, between two commits or inside one, start it again: every value
and counter as if it never died (slow)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import redis

from maquette.config import Settings, load_settings
from maquette.stream.events import publish
from maquette.stream.history import events_sql
from maquette.stream.operations import reset, status
from maquette.stream.processor import StreamProcessor
from tests.conftest import make_project
from tests.stream_checks import (
    assert_counted_once,
    assert_stream_equals_batch,
    processor_process,
    wait_until,
)
from tests.test_stream import DAY, apply_own_repo

pytestmark = pytest.mark.slow


def _project(folder: Path, redis_url: str, name: str, commit_interval_s: float) -> Settings:
    """A project of its own (Feast project, stream, dead letters), applied, its stream empty."""
    project = make_project(
        folder,
        redis_url,
        feast={"project": name},
        stream={
            "stream": f"{name}:departures",
            "dead_letter": f"{name}:departures:dead",
            "events_source": None,
            "backfill_before": None,
            "batch": 100,
            "commit_interval_s": commit_interval_s,
        },
    )
    settings = load_settings(project)
    apply_own_repo(settings)
    reset(settings)
    return settings


def _departures(
    loaded: Settings, days: int, malformed_every: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The demo's departures over `days` from DAY, and copies of some with a malformed delay."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    events = con.sql(events_sql(loaded, DAY, DAY + timedelta(days=days))).to_arrow_table()
    rows = events.to_pylist()
    bad = [{**rows[i], "dep_delay": "n/a"} for i in range(0, len(rows), malformed_every)]
    return rows, bad


def _redelivered(log: Path) -> int:
    """The number in the processor's summary line, `N events applied (M redelivered), ...`."""
    text = log.read_text()
    found = re.findall(r"events applied \(([\d,]+) redelivered\)", text)
    assert len(found) == 1, f"expected one summary line in {log}:\n{text[-2_000:]}"
    return int(found[0].replace(",", ""))


def _kill_with_entries_pending(process: subprocess.Popen[bytes], settings: Settings) -> bool:
    """SIGKILL the processor while entries it read are unacknowledged; False (and it runs on)
    if none are. Frozen by SIGSTOP first, it cannot commit between the check and the kill."""
    os.killpg(process.pid, signal.SIGSTOP)
    if status(settings).pending == 0:
        os.killpg(process.pid, signal.SIGCONT)
        return False
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    return True


def test_killed_processor_resumes_without_losing_or_double_counting(
    tmp_path: Path, running_redis: str, loaded_project: Settings
) -> None:
    settings = _project(tmp_path / "p", running_redis, "stream_kill", commit_interval_s=1.0)
    events, bad = _departures(loaded_project, days=10, malformed_every=997)
    assert len(events) > 8_000
    chunks = [events[i : i + 100] for i in range(0, len(events), 100)]

    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = processor_process(settings.project_dir, first_log, "--until-idle", "3")
    client = redis.Redis.from_url(running_redis)
    wait_until(lambda: bool(client.exists(settings.stream.stream)), 90, "the consumer group")
    # Published at the processor's pace; killed once 30% is committed, between two commits
    # (commit_interval_s is 1 s): entries read and pushed online, not acknowledged.
    killed = False
    for i, chunk in enumerate(chunks):
        publish(settings, chunk + (bad[i : i + 1] if i < len(bad) else []))
        wait_until(lambda: status(settings).undelivered == 0, 60, "the processor to read a chunk")
        state = status(settings)
        if state.events >= len(events) * 0.3 and state.pending > 0:
            killed = _kill_with_entries_pending(first, settings)
            if killed:
                break
    assert killed, "all events were published before 30% were committed with entries pending"
    killed_at = status(settings)
    assert 0 < killed_at.events < len(events) and killed_at.pending > 0, killed_at
    for chunk in chunks[i + 1 :]:
        publish(settings, chunk)
    publish(settings, bad[i + 1 :])

    second = processor_process(settings.project_dir, second_log, "--until-idle", "3")
    assert second.wait(120) == 0, second_log.read_text()[-2_000:]
    # Exactly what the first left unacknowledged is read again, from the committed state.
    assert _redelivered(second_log) == killed_at.pending > 0
    assert_counted_once(settings, len(events), len(bad))
    assert_stream_equals_batch(settings, events)


@pytest.mark.parametrize(
    "crash_at",
    [
        "stream.view_merged:5",  # the third commit: one view's Parquet merged, the other not
        "stream.offline_written:3",  # the third commit: Parquet written; state, counters, XACK not
    ],
)
def test_processor_killed_inside_a_commit_resumes_exactly(
    tmp_path: Path, running_redis: str, loaded_project: Settings, crash_at: str
) -> None:
    name = "stream_crash_" + crash_at.split(":")[0].replace(".", "_")
    # A commit after every read of 100 entries: the third commit is reached whatever the timing.
    settings = _project(tmp_path / "p", running_redis, name, commit_interval_s=0.001)
    events, bad = _departures(loaded_project, days=2, malformed_every=97)
    assert len(events) > 1_000
    chunks = [events[i : i + 100] for i in range(0, len(events), 100)]
    for i, chunk in enumerate(chunks):
        publish(settings, chunk + bad[i : i + 1])
    publish(settings, bad[len(chunks) :])

    log = tmp_path / "crashed.log"
    crashed = processor_process(settings.project_dir, log, "--until-idle", "5", crash_at=crash_at)
    assert crashed.wait(120) == -signal.SIGKILL, log.read_text()[-2_000:]
    point, _, nth = crash_at.partition(":")
    assert f"maquette: crash point {point} reached ({nth}): SIGKILL" in log.read_text()
    killed_at = status(settings)
    assert 0 < killed_at.events < len(events) and killed_at.pending > 0, killed_at

    # Started again (here, in this process) without the crash point.
    result = StreamProcessor(settings).run(until_idle_s=1.0)
    assert_counted_once(settings, len(events), len(bad))
    assert_stream_equals_batch(settings, events)
    assert result.redelivered == killed_at.pending > 0
