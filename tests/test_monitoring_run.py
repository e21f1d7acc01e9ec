"""A replayed day of December: served with features as of each request, then one monitoring
pass (real Redis, real Feast, real Evidently, Prefect for the flow)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from maquette import registry
from maquette.config import Settings, load_settings
from maquette.errors import ConfigError, DataNotLoaded
from maquette.features.layer import FeatureLayer
from maquette.monitoring import alerts, labels
from maquette.monitoring import monitor as monitoring
from maquette.monitoring.freshness import freshness
from maquette.monitoring.live_metrics import live_metrics
from maquette.platform import replay
from maquette.serving.predictor import Predictor
from maquette.training.metrics import binary_metrics, regression_metrics
from tests.conftest import make_project

START = datetime(2013, 12, 2, 11, tzinfo=UTC)  # 06:00 in New York
END = datetime(2013, 12, 2, 21, tzinfo=UTC)
FIELDS = ["origin", "carrier", "tailnum", "route", "scheduled_departure"]


@pytest.fixture(scope="module")
def replayed(
    production: dict[str, str],
    loaded_project: Settings,
    running_redis: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """A project on its own Redis database whose online store follows the replay clock."""
    folder = make_project(tmp_path_factory.mktemp("replay"), running_redis.rsplit("/", 1)[0] + "/5")
    settings = load_settings(folder)
    shutil.copytree(
        loaded_project.offline_store,
        settings.offline_store,
        ignore=shutil.ignore_patterns("predictions*", "scored", "labels", "monitoring"),
    )
    layer = FeatureLayer(settings)
    layer.apply()
    # Feast imports repo modules by bare name; this project's own sources must answer.
    source = layer.store.get_feature_view("weather_hourly").batch_source.path
    assert source.startswith(str(settings.offline_store)), source
    layer.materialize(datetime(2013, 1, 1, tzinfo=UTC), START - timedelta(hours=1))
    for tag in production.values():
        registry.promote(settings, tag, "production")
    predictor = Predictor(settings)
    rows = replay.entity_rows(settings, "flight_delay", START, END).dropna(subset=FIELDS)

    def send(batch: list[dict[str, Any]], when: datetime) -> list[Any]:
        return [
            predictor.predict(batch, f"{name}@production", as_of=when)
            for name in ("flight_delay", "late_arrival")
        ]

    result = replay.replay(
        settings, rows, FIELDS, send, START, END, timestamp_column="event_timestamp", layer=layer
    )
    assert result.failures == 0 and result.rows == len(rows) > 100
    return settings


@pytest.fixture()
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP endpoint on loopback that keeps what it is sent."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()


def test_a_pass_reports_metrics_drift_quality_and_no_skew(replayed: Settings) -> None:
    run = monitoring.run(replayed, as_of=END + timedelta(hours=6), announce=lambda _: None)
    assert set(run.models) == {"flight_delay", "late_arrival"}
    delay = run.models["flight_delay"]
    assert delay.labelled > 0.9 * delay.predictions  # all landed 6 hours after the last one
    daily = delay.metrics["daily"]
    assert daily[daily.partition == "all"]["rmse"].notna().all()
    assert set(delay.metrics["hourly"]["window"]) == {"hourly"}
    # The vectorized per-window metrics equal metrics.py on the same rows.
    scored = labels.join_labels(replayed, "late_arrival", END + timedelta(hours=6)).to_pandas()
    known = scored[scored.label.notna()]
    version = registry.resolve(replayed, f"late_arrival:{known.version.iloc[0]}").record
    expected = binary_metrics(
        known.label.to_numpy(), known.prediction.to_numpy(), version.threshold
    )
    late = run.models["late_arrival"].metrics["daily"]
    (row,) = late[late.partition == "all"].to_dict("records")
    for metric in ("auc", "log_loss", "precision", "recall"):
        assert row[metric] == pytest.approx(expected[metric]), metric
    # Regression too, with unlabelled rows present (they must not count).
    scored = labels.join_labels(replayed, "flight_delay", END).to_pandas()
    assert scored.label.isna().any()
    known = scored[scored.label.notna()]
    record = registry.resolve(replayed, f"flight_delay:{known.version.iloc[0]}").record
    expected = regression_metrics(
        known.label.to_numpy(), known.prediction.to_numpy(), record.label_shift
    )
    series = live_metrics(
        replayed, "flight_delay", labels.join_labels(replayed, "flight_delay", END)
    )
    (row,) = series[series.partition == "all"].to_dict("records")
    for metric in ("r2", "rmse", "mae", "rmsle"):
        assert row[metric] == pytest.approx(expected[metric]), metric
    (report,) = delay.reports  # one weekly window
    assert Path(report.html).is_file() and report.quality["rmse"] > 0
    # December mornings are far colder than the January-September reference.
    assert "temp" in report.drifted_features and report.prediction_drift is not None
    # Served features were the offline point-in-time values: no skew.
    for found in delay.skew:
        assert found.rows == delay.predictions
        assert found.worst == 0.0, found.examples
    # Judged 6 hours after the replay stopped materializing, hourly weather is stale (TTL 3 h).
    fresh = {f.view: f for f in run.freshness}
    assert fresh["weather_hourly"].stale and fresh["plane"].ttl_s is None
    assert any(a.metric == "freshness:weather_hourly" for a in run.new_alerts)
    at_end = {f.view: f for f in freshness(replayed, END)}
    assert not at_end["weather_hourly"].stale and not at_end["carrier_daily"].stale
    page = run.index.read_text()
    assert "flight_delay" in page and "Training/serving skew" in page and "evidently ui" in page
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(run.workspace))
    (project,) = workspace.search_project("maquette: flight_delay")
    assert len(workspace.list_runs(project.id)) >= 2  # drift and quality
    titles = [panel.title for panel in project.dashboard.model().panels]
    assert titles == ["Share of drifted features", "Prediction drift", "RMSE"]


def test_labels_not_yet_known_are_not_counted(replayed: Settings) -> None:
    run = monitoring.run(
        replayed, ["late_arrival"], as_of=START + timedelta(minutes=30), announce=lambda _: None
    )
    found = run.models["late_arrival"]
    assert found.labelled == 0
    (report,) = found.reports
    assert report.quality == {} and "no labels yet" in report.note
    # The window's report was redone: its earlier Evidently runs were replaced, not kept beside.
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(run.workspace))
    (project,) = workspace.search_project("maquette: late_arrival")
    assert sorted(map(str, workspace.list_runs(project.id))) == sorted(report.workspace_runs)
    assert len(report.workspace_runs) == 1  # drift only: no labels, no quality run
    assert not [a for a in run.new_alerts if a.kind == "accuracy"]


def test_tight_threshold_alerts_once_calls_webhook_and_retrains(
    replayed: Settings, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    settings = replayed.model_copy(deep=True)
    settings.monitoring.webhook = url
    spec = settings.models["flight_delay"].monitoring
    spec.thresholds.rmse_above = 1.0
    spec.retrain_on_alert = True
    before = registry.resolve(settings, "flight_delay@production").tag
    run = monitoring.run(settings, ["flight_delay"], END + timedelta(hours=6), announce=print)
    accuracy = [a for a in run.new_alerts if a.kind == "accuracy" and a.metric == "rmse"]
    assert accuracy and "rmse" in accuracy[0].message and "above 1" in accuracy[0].message
    assert received and received[0]["alerts"][0]["model"] == "flight_delay"
    assert "trained candidate flight_delay:" in run.retrained["flight_delay"]
    assert registry.resolve(settings, "flight_delay@production").tag == before  # not promoted
    again = monitoring.run(settings, ["flight_delay"], END + timedelta(hours=6), drain=False)
    assert not [a for a in again.new_alerts if a.kind == "accuracy"]  # recorded once
    assert len(alerts.recorded(settings)) >= len(accuracy)


def test_bad_input_is_named(replayed: Settings, loaded_project: Settings) -> None:
    with pytest.raises(ConfigError, match="no model named 'nope'"):
        monitoring.run(replayed, ["nope"])
    fresh = load_settings(make_project(replayed.project_dir.parent / "empty", None))
    fresh.redis.url = replayed.redis.url
    with pytest.raises(DataNotLoaded, match=r"no drained predictions|no logged predictions"):
        monitoring.run(fresh, ["flight_delay"], drain=False)


def test_monitor_run_command_runs_the_prefect_flow_on_the_platforms_server(
    replayed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness
    from typer.testing import CliRunner

    from maquette.cli import app

    with prefect_test_harness(server_startup_timeout=120):
        # The harness's server stands in for the platform's: the command finds it by its port.
        port = str(PREFECT_API_URL.value()).rsplit(":", 1)[1].split("/")[0]
        monkeypatch.setenv("MAQUETTE_ORCHESTRATION_PREFECT_PORT", port)
        result = CliRunner().invoke(
            app,
            [
                "monitor",
                "run",
                "--model",
                "flight_delay",
                "--as-of",
                (END + timedelta(hours=6)).isoformat(),
                "--project",
                str(replayed.project_dir),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "flight_delay" in result.output and "reports:" in result.output
    assert "monitor flow run on the platform's Prefect" in " ".join(result.output.split())
