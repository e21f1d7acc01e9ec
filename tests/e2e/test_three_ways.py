"""Online over HTTP, batch and library answer alike with the speed layer live, and the logged
predictions show no training/serving skew (slow).

A project of its own (its own Redis database, Feast project, stream keys and offline copy):
batch views materialized up to the hour T, a real `maquette stream run` fed the three hours of
December departures before T, a real `bentoml serve`; the flights of [T, T+1h) are predicted
as of T over HTTP, by `predict_batch` (point in time, from the Parquet the processor commits)
and by `load_model`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from maquette import registry
from maquette.config import Settings, load_settings
from maquette.features.layer import FeatureLayer
from maquette.monitoring import labels, skew
from maquette.monitoring.drift import served_inputs
from maquette.serving import batch
from maquette.serving import prediction_log as predictions
from maquette.serving.library import load_model
from maquette.stream.aggregations import stream_definition
from maquette.stream.events import publish
from maquette.stream.history import events_sql
from maquette.stream.operations import status
from tests.conftest import ROOT, copy_feature_tables, free_port, make_project
from tests.e2e.test_durability import service_in_own_session
from tests.test_serving import wait_ready
from tests.test_stream import apply_own_repo

pytestmark = pytest.mark.slow

HOUR = datetime(2013, 12, 2, 16, tzinfo=UTC)  # 11:00 in New York: all three airports busy
FIELDS = ["origin", "carrier", "tailnum", "route", "scheduled_departure"]
MODEL = "flight_delay@production"


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's own session (it was started in one), then reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@dataclass
class LiveProject:
    settings: Settings
    service_url: str


@pytest.fixture()
def live_project(
    production: dict[str, str],
    loaded_project: Settings,
    running_redis: str,
    tmp_path: Path,
) -> Iterator[LiveProject]:
    """A served project whose stream processor has taken the three hours before HOUR."""
    url = running_redis.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(url).flushdb()
    folder = make_project(
        tmp_path / "three",
        url,
        feast={"project": "three_ways"},
        stream={
            "stream": "three:departures",
            "dead_letter": "three:departures:dead",
            "commit_interval_s": 1.0,
        },
    )
    settings = load_settings(folder)
    copy_feature_tables(loaded_project, settings)
    apply_own_repo(settings)
    for tag in production.values():
        registry.promote(settings, tag, "production")
    port = free_port()
    log = (tmp_path / "processor.log").open("ab")
    processor = subprocess.Popen(
        [sys.executable, "-m", "maquette", "stream", "run", "--project", str(folder)],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    service = service_in_own_session(settings, port)
    try:
        # Batch views as a scheduled materialize would have left them at HOUR; the streamed
        # views come from the processor alone.
        layer = FeatureLayer(settings)
        streamed = {a.view for a in stream_definition(settings).aggregations}
        batch_views = [v.name for v in layer.feature_views() if v.name not in streamed]
        layer.materialize(datetime(2013, 1, 1, tzinfo=UTC), HOUR, batch_views)
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        events = con.sql(events_sql(settings, HOUR - timedelta(hours=3), HOUR)).to_arrow_table()
        assert events.num_rows > 100
        publish(settings, events.to_pylist())

        def taken() -> bool:
            # Counted, acknowledged and committed: online rows are written before the commit,
            # the offline Parquet (batch's point-in-time source) with it.
            assert processor.poll() is None, (tmp_path / "processor.log").read_text()[-2_000:]
            now = status(settings)
            return now.events == events.num_rows and now.pending == 0 and now.undelivered == 0

        _wait(taken, 120, f"the processor to commit {events.num_rows} events")
        wait_ready(f"http://127.0.0.1:{port}", timeout=120)
        yield LiveProject(settings, f"http://127.0.0.1:{port}")
    finally:
        _stop(service)
        _stop(processor)
        log.close()


def _flights(settings: Settings) -> pa.Table:
    """The flights scheduled in [HOUR, HOUR + 1h), with `as_of` = HOUR on every row."""
    query = (
        f"SELECT flight_id, {', '.join(FIELDS)} FROM flights "
        f"WHERE scheduled_departure >= '{HOUR.isoformat()}' "
        f"AND scheduled_departure < '{(HOUR + timedelta(hours=1)).isoformat()}' "
        "AND tailnum IS NOT NULL ORDER BY flight_id"
    )
    table = batch.entity_table(settings, query)
    when = pa.array([HOUR] * table.num_rows, pa.timestamp("us", tz="UTC"))
    return table.append_column("as_of", when)


def _json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def test_http_batch_and_library_agree_with_the_stream_live_and_skew_is_zero(
    live_project: LiveProject,
) -> None:
    settings = live_project.settings
    flights = _flights(settings)
    rows = [{k: r[k] for k in FIELDS} for r in flights.to_pylist()]
    assert len(rows) > 30
    body = {"rows": [_json(r) for r in rows], "model": MODEL, "as_of": HOUR.isoformat()}
    reply = httpx.post(f"{live_project.service_url}/predict", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    online = reply.json()["predictions"]
    scored = batch.predict_batch(settings, flights, MODEL, timestamp_column="as_of").table
    offline = scored.to_pylist()
    library = load_model(MODEL, settings).predict(rows, as_of=HOUR)
    assert len(online) == len(offline) == len(library) == len(rows)
    for http, row, mine in zip(online, offline, library, strict=True):
        flight = row["flight_id"]
        assert http["prediction"] == pytest.approx(row["prediction"], rel=1e-9), flight
        assert mine.prediction == pytest.approx(row["prediction"], rel=1e-9), flight
        assert http["partition"] == row["partition"] == mine.partition, flight
        assert http["model"] == row["model_version"] == mine.model, flight

    # The speed layer was live: its features reached the model for most rows, equal to the
    # values batch read from the Parquet the processor committed.
    streamed = [n for agg in stream_definition(settings).aggregations for n in agg.feature_names]
    for feature in streamed:
        hidden = [feature in a["missing_features"] + a["stale_features"] for a in online]
        assert hidden.count(False) >= 0.8 * len(online), (feature, hidden.count(False))
        assert scored[feature].null_count == hidden.count(True), feature

    # The log, drained, holds exactly what was served: skew 0 on a non-empty report.
    drained = predictions.drain(settings)
    assert drained.entries == len(rows)
    labels.ingest_labels(settings, "flight_delay")
    labels.join_labels(settings, "flight_delay")
    logged = pq.read_table(labels.scored_path(settings, "flight_delay"))
    served = served_inputs(logged.to_pandas(), streamed)
    assert (served.notna().mean() >= 0.8).all(), served.notna().mean()
    (report,) = skew.skew_report(settings, "flight_delay", logged)
    assert report.rows == len(rows)
    assert set(streamed) <= set(report.mismatch_rate)
    assert report.worst == 0.0, report.examples
