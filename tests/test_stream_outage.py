"""kill -9 Redis under a running stream processor, start it again: the processor waits, resumes,
and every value comes out as the batch computes it, nothing lost or counted twice (slow).

Redis keeps an append-only file, so a restarted server on the same data directory holds the
stream, the consumer group (with its pending entries) and the processor's committed state.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from maquette.config import load_settings
from maquette.data.redis_server import redis_server_binary, server_command, wait_until_ready
from maquette.stream.events import publish
from maquette.stream.operations import status
from maquette.stream.processor import StreamProcessor
from tests.conftest import free_port, make_project
from tests.stream_checks import (
    assert_counted_once,
    assert_stream_equals_batch,
    processor_process,
    wait_until,
)
from tests.test_stream import DAY, apply_own_repo

pytestmark = pytest.mark.slow


class RedisServer:
    """A redis-server of this test's own (AOF on), which it may kill -9 and start again."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir()
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = redis_server_binary()
        cmd = server_command(binary, self.port, "127.0.0.1", self.data_dir, daemonize=False)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_ready(self.url, 30, self.data_dir / "redis.log")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown, no last AOF rewrite
        self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    if server.proc is not None:
        server.proc.terminate()
        server.proc.wait(10)


def _departures(count: int) -> list[dict[str, Any]]:
    """Departures over a day, a little out of order (within the allowed lateness)."""
    rng = random.Random(13)
    events = []
    for i in range(count):
        when = DAY + timedelta(seconds=25 * i + rng.randint(-200, 200), microseconds=1)
        origin, carrier = f"OT{rng.randint(1, 4)}", f"C{rng.randint(1, 7)}"
        delay = float(rng.randint(-15, 180))
        events.append(
            {"origin": origin, "carrier": carrier, "departed_at": when, "dep_delay": delay}
        )
    return events


def test_processor_waits_out_a_redis_crash_and_resumes_exactly(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    project = make_project(
        tmp_path / "p",
        redis_server.url,
        feast={"project": "stream_outage"},
        stream={
            "stream": "outage:departures",
            "dead_letter": "outage:departures:dead",
            "events_source": None,
            "backfill_before": None,
            "batch": 50,
            "commit_interval_s": 0.5,
        },
    )
    settings = load_settings(project)
    apply_own_repo(settings)
    events = _departures(3_000)
    bad = [{**events[i], "dep_delay": "n/a"} for i in range(0, len(events), 150)]
    chunks = [events[i : i + 50] for i in range(0, len(events), 50)]
    letters = iter(bad)

    log = tmp_path / "processor.log"
    processor = processor_process(project, log)
    try:
        client = redis.Redis.from_url(redis_server.url)
        wait_until(lambda: bool(client.exists("outage:departures")), 60, "the consumer group")
        sent = 0
        for sent, chunk in enumerate(chunks, 1):
            publish(settings, [*chunk, next(letters)] if sent % 3 == 0 else chunk)
            time.sleep(0.02)
            if status(settings).events >= len(events) * 0.3:
                break
        before = status(settings)
        assert 0 < before.events < len(events), before
        # The stream's newest id (its length shrinks as the processor trims what it acked).
        published = client.xinfo_stream("outage:departures")["last-generated-id"]
        redis_server.kill()

        # The processor notices, says so, and stays up while Redis is away.
        wait_until(
            lambda: processor.poll() is not None or "retrying" in log.read_text(),
            60,
            "the processor to notice the outage",
        )
        time.sleep(3)  # an outage of a few seconds: several reconnection attempts fail
        assert processor.poll() is None, log.read_text()[-3_000:]

        redis_server.start()
        # AOF: everything Redis acknowledged before the crash is back.
        assert client.xinfo_stream("outage:departures")["last-generated-id"] == published
        for chunk in chunks[sent:]:
            publish(settings, chunk)
        publish(settings, list(letters))

        def caught_up() -> bool:  # every entry delivered and acknowledged (then trimmed)
            state = status(settings)
            return (state.pending, state.undelivered) == (0, 0)

        wait_until(
            lambda: processor.poll() is not None or caught_up(), 120, "the processor to catch up"
        )
        assert processor.poll() is None, log.read_text()[-3_000:]
    finally:
        if processor.poll() is None:
            os.killpg(processor.pid, signal.SIGTERM)  # a last commit, then exit 0
        exit_code = processor.wait(60)

    text = log.read_text()
    assert exit_code == 0, text[-3_000:]
    assert "unreachable, retrying" in text and "back after" in text, text[-3_000:]
    assert_counted_once(settings, len(events), len(bad))
    assert_stream_equals_batch(settings, events)


def test_a_processor_stopped_while_redis_is_away_returns_and_keeps_its_entries_pending(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    project = make_project(
        tmp_path / "p",
        redis_server.url,
        feast={"project": "stream_outage_stop"},
        stream={"events_source": None, "backfill_before": None, "commit_interval_s": 3600},
    )
    settings = load_settings(project)
    apply_own_repo(settings)
    processor = StreamProcessor(settings)
    events = _departures(200)
    publish(settings, events[:100])
    stop, outcome = threading.Event(), []
    runner = threading.Thread(target=lambda: outcome.append(processor.run(stop=stop)))
    runner.start()
    wait_until(lambda: processor.result.events == 100, 60, "the first events")
    redis_server.kill()  # read and pushed online, never committed (the interval is an hour)
    wait_until(lambda: "unreachable, retrying" in caplog.text, 60, "the processor to notice")
    stop.set()
    runner.join(60)
    assert not runner.is_alive() and outcome, "run() did not return"
    assert "Redis back" not in caplog.text

    redis_server.start()
    publish(settings, events[100:])
    result = StreamProcessor(settings).run(until_idle_s=0.5)
    assert (result.redelivered, result.events) == (100, 200)
    done = status(settings)
    assert (done.events, done.pending, done.undelivered) == (200, 0, 0)
