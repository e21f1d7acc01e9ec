"""What the stream processor's recovery tests check: after any kill, the batch's answer.

The speed layer promises that a killed processor (or a crashed Redis) changes nothing: every
value comes out as the batch SQL computes it over the same events, and every event is counted
once. The kill tests (tests/e2e/test_stream_kill.py, tests/test_stream_outage.py) end with
these checks, so they prove the same thing the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from maquette.config import Settings
from maquette.examples.nycflights13.stream import DEPARTURES
from maquette.faults import CRASH_AT
from maquette.features.layer import FeatureLayer
from maquette.stream.operations import status
from tests.conftest import ROOT


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.02)


def processor_process(
    project: Path, log: Path, *options: str, crash_at: str | None = None
) -> subprocess.Popen[bytes]:
    """`maquette stream run` in its own process group, output to `log`; `crash_at` sets
    MAQUETTE_CRASH_AT (maquette/faults.py) for this process only."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop(CRASH_AT, None)
    if crash_at is not None:
        env[CRASH_AT] = crash_at
    command = [sys.executable, "-m", "maquette", "stream", "run", *options]
    return subprocess.Popen(
        [*command, "--project", str(project)],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def assert_counted_once(settings: Settings, events: int, malformed: int) -> None:
    """The committed counters: each event applied once, each malformed one dead-lettered once,
    nothing late, nothing left pending or undelivered."""
    done = status(settings)
    counted = (done.events, done.malformed, done.late, done.dead_letters)
    assert counted == (events, malformed, 0, malformed), (
        f"(events, malformed, late, dead letters) counted {counted}, sent "
        f"{(events, malformed, 0, malformed)}: {done}"
    )
    assert (done.pending, done.undelivered) == (0, 0), f"entries left unprocessed: {done}"


def assert_stream_equals_batch(settings: Settings, events: list[dict[str, Any]]) -> None:
    """Each view's offline rows, and each key's online values, equal the batch SQL over `events`."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("sent", pa.Table.from_pylist(events))
    layer = FeatureLayer(settings)
    for agg in DEPARTURES.aggregations:
        expected = con.sql(agg.backfill_sql("SELECT * FROM sent", DEPARTURES.event_time)).fetchall()
        assert expected, f"no batch rows for {agg.view}: the check would be vacuous"
        path = settings.offline_store / f"{agg.view}.parquet"
        offline = con.sql(f"SELECT * FROM read_parquet('{path}') ORDER BY 1, 2").fetchall()
        assert offline == expected, _difference(f"{agg.view} offline rows", offline, expected)
        newest = {row[0]: row[2:] for row in expected}  # the last row per key wins
        online = layer.online_features(
            [{agg.key: k} for k in newest], [f"{agg.view}:{n}" for n in agg.feature_names]
        )
        got = [tuple(v.values()) for v in online.values]
        want = list(newest.values())
        assert got == want, _difference(f"{agg.view} online values", got, want)


def _difference(what: str, got: list[Any], expected: list[Any]) -> str:
    """The message of a failed comparison: sizes and the first row that differs."""
    first = next((i for i, (g, e) in enumerate(zip(got, expected, strict=False)) if g != e), None)
    where = (
        f"first difference at row {first}: {got[first]} != {expected[first]} (batch)"
        if first is not None
        else "equal as far as the shorter goes"
    )
    return f"{what} differ from the batch SQL: {len(got)} rows, batch {len(expected)}; {where}"
