"""Prefect flows on a real (temporary) Prefect server.

Also guards the dependency trap: with fastapi>=0.155, Prefect 3.8.8's server fails to import
while `pip check` is silent; starting the harness server here would fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from prefect.testing.utilities import prefect_test_harness

from maquette.config import Settings, load_settings


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def flows_project(loaded_project: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows take no project parameter: they read the project named by MAQUETTE_PROJECT_DIR."""
    monkeypatch.setenv("MAQUETTE_PROJECT_DIR", str(loaded_project.project_dir))


def test_materialize_flow_writes_the_new_rows_of_each_window_on_a_prefect_server(
    prefect_server: None,
    loaded_project: Settings,
    running_redis: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.materialize import materialize
    from maquette.features.layer import FeatureLayer

    # Its own Redis database and Feast registry (MAQUETTE_* reach the flow's settings too): the
    # session's online store holds every row already, so nothing new would be written there.
    url = running_redis.rsplit("/", 1)[0] + "/10"
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("MAQUETTE_REDIS_URL", url)
    monkeypatch.setenv("MAQUETTE_FEAST_REGISTRY", str(tmp_path / "registry.db"))
    FeatureLayer(load_settings(loaded_project.project_dir)).apply()

    def run(end: datetime) -> dict[str, int]:
        state = materialize(end=end, return_state=True)
        assert state.is_completed(), state
        return dict(state.result())

    try:
        first = run(datetime(2013, 7, 1, tzinfo=UTC))
        second = run(datetime(2014, 1, 5, tzinfo=UTC))  # picks up where the first ended
    finally:
        redis.Redis.from_url(url).flushdb()
    views = {
        "weather_hourly",
        "plane",
        "carrier_daily",
        "route_daily",
        "origin_daily",
        "origin_last_hour",
        "carrier_last_hour",
    }
    assert set(first) == set(second) == views
    assert all(first[v] > 0 for v in views), first
    # Plane facts are stamped at the start of the data: written once, by the first window.
    assert second["plane"] == 0 and all(second[v] > 0 for v in views - {"plane"}), second


def test_materialize_task_logic_runs_without_prefect(loaded_project: Settings) -> None:
    from flows.materialize import materialize_views

    written = materialize_views.fn(datetime(2014, 1, 2, tzinfo=UTC), ["plane"])
    assert written == {"plane": 0}  # already materialized: nothing newer to write


def test_train_flow_registers_a_version_on_a_prefect_server(
    prefect_server: None, trained, loaded_project: Settings
) -> None:
    from flows.train import train
    from maquette import registry

    state = train("late_arrival", trials=1, return_state=True)
    assert state.is_completed()
    version = registry.resolve(loaded_project, state.result())
    assert version.record.search.trials[0].number == 0
    assert version.report.is_file()


def test_drain_and_batch_predict_flows_run_on_a_prefect_server(
    prefect_server: None,
    production,
    loaded_project: Settings,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pyarrow.parquet as pq

    from flows.batch_predict import batch_predict
    from flows.drain import drain
    from maquette.serving.predictor import Predictor

    row = {
        "origin": "JFK",
        "carrier": "UA",
        "tailnum": "N14228",
        "route": "JFK-LAX",
        "scheduled_departure": "2013-12-31T15:00:00Z",
    }
    Predictor(loaded_project).predict([row, row])
    state = drain(return_state=True)
    assert state.is_completed() and state.result() >= 2
    # Entities and the output folder come from the settings, never from a run's parameters.
    query = "SELECT * FROM flights WHERE event_timestamp >= '2013-12-01' AND event_timestamp < '2013-12-02'"
    monkeypatch.setenv("MAQUETTE_ORCHESTRATION_BATCH_ENTITIES", query)
    monkeypatch.setenv("MAQUETTE_ORCHESTRATION_BATCH_OUTPUT", str(tmp_path))
    summary = batch_predict("flight_delay@production")
    output = tmp_path / "flight_delay" / "2013-12-01_2013-12-01.parquet"
    assert summary["output"] == str(output)
    scored = pq.read_table(output)
    assert summary["rows"] == scored.num_rows > 900
    assert set(scored["model_version"].to_pylist()) == {production["flight_delay"]}
