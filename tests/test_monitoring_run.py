"""A replayed day of December: served with features as of each slot's start, the streamed ones
from the stream processor, then monitoring passes (real Redis, real Feast, real Evidently, the
stream processor, a real Prefect server for the flows and the train deployments)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from maquette import registry
from maquette.cli.render import monitor_summary
from maquette.cli.render_demo import _monitoring_summary as demo_monitoring_summary
from maquette.config import Settings, load_settings
from maquette.data.sources import feature_table_path
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.errors import ConfigError, DataNotLoaded
from maquette.features.layer import FeatureLayer
from maquette.monitoring import alerts, drift, incidents, labels
from maquette.monitoring import monitor as monitoring
from maquette.monitoring.freshness import freshness
from maquette.monitoring.live_metrics import live_metrics
from maquette.monitoring.verdicts import BREACH, CLEAR, NOT_ENOUGH
from maquette.platform import components as platform
from maquette.platform import replay
from maquette.serving import prediction_log
from maquette.serving.predictor import Predictor
from maquette.stream import operations
from maquette.stream.aggregations import stream_definition
from maquette.stream.backfill import write_parquet_durably
from maquette.stream.events import publish
from maquette.stream.history import events_sql
from maquette.stream.processor import StreamProcessor
from maquette.training.metrics import binary_metrics, regression_metrics
from tests.conftest import copy_feature_tables, free_port, make_project
from tests.test_console import console_client

START = datetime(2013, 12, 2, 11, tzinfo=UTC)  # 06:00 in New York
END = datetime(2013, 12, 2, 21, tzinfo=UTC)
FIELDS = ["origin", "carrier", "tailnum", "route", "scheduled_departure"]
MODELS = ("flight_delay", "late_arrival")
FLOWS = ("materialize", "drain", "monitor", "batch_predict", "train")
# The retraining test: which model's incident may promote its candidate (`promote_retrained`).
PROMOTE_RETRAINED = {"flight_delay": True, "late_arrival": False}


def _quick_retraining(folder: Path) -> None:
    """Retraining here shows where a run happens and what it registers, not model quality."""
    path = folder / "maquette.yaml"
    config = yaml.safe_load(path.read_text())
    for spec in config["models"].values():
        spec["params"] = {"n_estimators": 10}
        spec["search"]["trials"] = 1
        # One replayed day is one daily window: incidents here open on their first breach.
        spec.setdefault("monitoring", {})["open_after"] = 1
    path.write_text(yaml.safe_dump(config))


def _forget_streamed_rows(settings: Settings) -> None:
    """Keep only the batch layer's rows of the streamed views: whatever other tests streamed
    into the session's project after `stream.backfill_before` is not this replay's."""
    before = settings.stream.backfill_before
    assert before is not None
    con = duckdb_connection(quiet=True)
    for agg in stream_definition(settings).aggregations:
        path = feature_table_path(settings, agg.view)
        kept = (
            f"SELECT * FROM read_parquet({sql_literal(path)}) "
            f"WHERE event_timestamp < {sql_literal(before.isoformat())}::TIMESTAMPTZ"
        )
        write_parquet_durably(con, kept, path)


class _SpeedLayer:
    """At each slot start: the departures not yet published go to the project's event stream
    and the stream processor (in this process, until idle) applies them, so every streamed
    value served in the slot is the processor's, as under `maquette demo`."""

    def __init__(self, settings: Settings, since: datetime) -> None:
        self.settings, self.since, self.published = settings, since, 0
        self.processor = StreamProcessor(settings)

    def __call__(self, clock: datetime, _upper: datetime | None = None) -> None:
        sql = events_sql(self.settings, self.since, clock)
        events = duckdb_connection(quiet=True).sql(sql).to_arrow_table().to_pylist()
        publish(self.settings, events)
        before = self.processor.result.events
        self.processor.run(until_idle_s=0.1)  # ends with a commit: offline rows in Parquet
        applied = self.processor.result.events - before
        assert applied == len(events), f"{applied} of {len(events)} departures before {clock}"
        self.since, self.published = clock, self.published + len(events)


def _streamed_features(settings: Settings) -> list[str]:
    return [n for agg in stream_definition(settings).aggregations for n in agg.feature_names]


@pytest.fixture(scope="module")
def replayed(
    production: dict[str, str],
    loaded_project: Settings,
    running_redis: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """A project on its own Redis database whose online store follows the replay clock: batch
    views materialized to each slot's start, streamed views fed by the stream processor from
    the departures before it; each slot's flights predicted as of its start (as the demo does).
    Its platform (a Prefect server and the deployments' runner) has free ports, no schedules."""
    folder = make_project(
        tmp_path_factory.mktemp("replay"),
        running_redis.rsplit("/", 1)[0] + "/5",
        orchestration={
            "prefect_port": free_port(),
            "runner_port": free_port(),
            "components": ["prefect", "deployments"],
            "schedules": dict.fromkeys(FLOWS),
        },
    )
    _quick_retraining(folder)
    settings = load_settings(folder)
    copy_feature_tables(loaded_project, settings)
    _forget_streamed_rows(settings)
    operations.reset(settings)
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
    assert settings.stream.backfill_before is not None
    speed_layer = _SpeedLayer(settings, settings.stream.backfill_before)
    speed_layer(START)  # the stream takes over where the batch layer's history ends

    def send(batch: list[dict[str, Any]], when: datetime) -> list[Any]:
        return [predictor.predict(batch, f"{name}@production", as_of=when) for name in MODELS]

    result = replay.replay(
        settings,
        rows,
        FIELDS,
        send,
        START,
        END,
        timestamp_column="event_timestamp",
        on_slot=speed_layer,
        layer=layer,
        per_slot=True,
    )
    assert result.failures == 0 and result.rows == len(rows) > 100
    assert speed_layer.published > 1000 and speed_layer.processor.result.late == 0
    return settings


@pytest.fixture(autouse=True)
def no_incidents_yet(replayed: Settings) -> None:
    """Each test starts with no incident and no judged window: passes of one test at other
    times (or thresholds) must not move the incidents another test looks at."""
    incidents.reset(replayed)


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
    (report,) = delay.reports  # one weekly window (Monday 2 December), still open
    assert Path(report.html).is_file() and report.quality["rmse"] > 0
    assert report.window == "weekly" and not report.complete and report.enough
    assert report.reference in ("trailing", "training") and report.reference_note
    assert report.prediction_drift is not None
    # Served features were the offline point-in-time values, the speed layer's too: no skew.
    streamed = _streamed_features(replayed)
    cap = replayed.monitoring.skew_sample
    for name, findings in run.models.items():
        (found,) = findings.skew  # one daily alert window: 2 December
        assert found.complete and found.enough, name
        assert found.predictions == findings.predictions > 100
        assert found.rows == min(cap, found.predictions), name  # a seeded sample per window
        assert set(streamed) <= set(found.mismatch_rate), found.mismatch_rate
        assert found.worst == 0.0, found.examples
    # ... and the streamed features were served (by the processor), not null on both sides.
    served = drift.served_inputs(
        labels.join_labels(replayed, "flight_delay", END).to_pandas(), streamed
    )
    assert served.notna().mean().min() > 0.9, served.notna().mean()
    # Judged 6 hours after the replay stopped materializing, hourly weather is stale (TTL 3 h).
    fresh = {f.view: f for f in run.freshness}
    assert fresh["weather_hourly"].stale and fresh["plane"].ttl_s is None
    at_end = {f.view: f for f in freshness(replayed, END)}
    assert not at_end["weather_hourly"].stale and not at_end["carrier_daily"].stale
    _check_incidents(replayed, run)
    # The summaries show the open incidents, one row each, not a wall of window rows.
    for summary in (monitor_summary, demo_monitoring_summary):
        console = Console(record=True, width=250)
        summary(console, run)
        text = console.export_text()
        assert f"{len(run.open_incidents)} open" in text, text
        assert "freshness:weather_hourly#1" in text and "weather_hourly" in text
    page = run.index.read_text()
    assert "flight_delay" in page and "Training/serving skew" in page and "evidently ui" in page
    assert "<h2>Incidents</h2>" in page and f"Open ({len(run.open_incidents)})" in page
    assert "freshness:weather_hourly#1" in page
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(run.workspace))
    (project,) = workspace.search_project("maquette: flight_delay")
    assert len(workspace.list_runs(project.id)) >= 2  # drift and quality
    titles = [panel.title for panel in project.dashboard.model().panels]
    assert titles == ["Share of drifted features", "Prediction drift", "RMSE"]


def _check_incidents(settings: Settings, run: monitoring.MonitorRun) -> None:
    """The pass's verdicts and incidents agree: the complete daily window of 2 December is
    judged for accuracy, missing features and skew; the open weekly drift window is not;
    each breach is in an open incident and each key of a clear verdict has none open."""
    judged = {(v.kind, v.model, v.subject) for v in run.verdicts}
    for name in MODELS:
        assert ("accuracy", name, "all") in judged and ("skew", name, "all") in judged
        assert ("missing_features", name, "all") in judged
        assert ("drift", name, "all") not in judged  # its window is still open
    day = [v for v in run.verdicts if v.kind != "freshness"]
    assert {(v.window_start, v.window_end) for v in day} == {
        ("2013-12-02T00:00:00+00:00", "2013-12-03T00:00:00+00:00")
    }
    # Served as computed offline: no skew. Every label arrived: accuracy is judged.
    assert {v.status for v in day if v.kind == "skew"} == {CLEAR}
    assert NOT_ENOUGH not in {v.status for v in day if v.kind == "accuracy"}
    opened = {(i.kind, i.model, i.subject): i for i in run.open_incidents}
    assert opened == {(i.kind, i.model, i.subject): i for i in run.incidents_opened}
    # Two checks may judge one key's window (missing features per feature and in any
    # feature): the window breaches when either does.
    breached = {(v.key, v.window_start) for v in run.verdicts if v.status == BREACH}
    for v in run.verdicts:
        if v.status == BREACH:
            assert v.finding is not None
            incident = opened[v.key]
            assert set(v.finding.columns) <= set(incident.columns)
            assert incident.opened_at == run.as_of.isoformat()
            assert (v.window_start, v.window_end) in {
                (w["start"], w["end"]) for w in incident.windows
            }
        elif (
            v.status == CLEAR and v.kind != "freshness" and (v.key, v.window_start) not in breached
        ):
            assert v.key not in opened
    stale = opened[("freshness", None, "weather_hourly")]
    assert stale.id == "freshness:weather_hourly#1" and "temp" in stale.columns
    assert "older than its TTL of 3.0 h" in stale.message
    assert [i.id for i in incidents.load(settings, "open")] == [i.id for i in run.open_incidents]


def test_labels_not_yet_known_are_not_counted(replayed: Settings) -> None:
    early = START + timedelta(minutes=30)
    # 22 predictions by then: a smaller minimum than the default 30 has the window tested.
    settings = replayed.model_copy(deep=True)
    settings.models["late_arrival"].monitoring.thresholds.min_rows = 10
    run = monitoring.run(settings, ["late_arrival"], as_of=early, announce=lambda _: None)
    found = run.models["late_arrival"]
    assert found.labelled == 0
    (report,) = found.reports
    assert report.enough and report.quality == {} and "no labels yet" in report.note
    # The window's report was redone: its earlier Evidently runs were replaced, not kept beside.
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(run.workspace))
    (project,) = workspace.search_project("maquette: late_arrival")
    assert sorted(map(str, workspace.list_runs(project.id))) == sorted(report.workspace_runs)
    assert len(report.workspace_runs) == 1  # drift only: no labels, no quality run
    # Half an hour into the day, no window is complete: nothing of the model is judged yet.
    assert [v for v in run.verdicts if v.model == "late_arrival"] == []
    assert [i for i in run.open_incidents if i.model == "late_arrival"] == []
    # With the default minimum of 30 rows, the window is not tested at all.
    run = monitoring.run(replayed, ["late_arrival"], as_of=early, announce=lambda _: None)
    (report,) = run.models["late_arrival"].reports
    assert not report.enough and report.rows == 22 and "not enough data" in report.note


def test_tight_threshold_alerts_once_calls_webhook_and_retrains(
    replayed: Settings,
    webhook: tuple[str, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, received = webhook
    settings = replayed.model_copy(deep=True)
    settings.monitoring.webhook = url
    spec = settings.models["flight_delay"].monitoring
    spec.thresholds.rmse_above = 1.0
    spec.retrain_on_alert = True
    before = registry.resolve(settings, "flight_delay@production").tag
    # A Prefect server is named but nothing answers there: the candidate is trained inline,
    # and the run says why, as does a warning in the log.
    nowhere = f"http://127.0.0.1:{free_port()}/api"
    with (
        temporary_settings({PREFECT_API_URL: nowhere}),
        caplog.at_level(logging.WARNING, "maquette.monitoring"),
    ):
        run = monitoring.run(settings, ["flight_delay"], END + timedelta(hours=6), announce=print)
    opened = {i.subject: i for i in run.incidents_opened if i.kind == "accuracy"}
    partitions = set(run.models["flight_delay"].metrics["daily"]["partition"])
    assert "all" in opened and set(opened) <= partitions, opened
    incident = opened["all"]
    assert incident.model == "flight_delay" and "rmse" in incident.columns
    assert "above 1" in incident.message and incident.severity == "critical"  # 40-odd vs 1
    (window,) = incident.windows
    assert window["start"] == "2013-12-02T00:00:00+00:00" and window["values"]["rmse"] > 2
    # The webhook heard of each opened incident once, as the store says.
    events = [(r["source"], r["event"], r["incident"]["id"]) for r in received]
    assert sorted(events) == sorted(("maquette", "opened", i.id) for i in run.incidents_opened)
    assert all(i.notified["opened"] for i in incidents.load(settings))
    retrained = run.retrained["flight_delay"].summary
    assert "trained candidate flight_delay:" in retrained
    assert f"inline, as the Prefect server at {nowhere} is unreachable" in retrained
    assert f"retraining flight_delay inline: the Prefect server at {nowhere}" in caplog.text
    assert registry.resolve(settings, "flight_delay@production").tag == before  # not promoted
    # The incident that set it off says so, with the version trained (the console shows it).
    triggers = {i.id for i in run.incidents_opened if i.kind in ("accuracy", "drift")}
    noted = {i.id: i.actions for i in incidents.load(settings) if i.id in triggers}
    assert noted and all(len(a) == 1 for a in noted.values()), noted
    for (action,) in noted.values():
        assert action["version"] == run.retrained["flight_delay"].version
        assert action["version"].startswith("flight_delay:") and action["summary"] == retrained
    # The console's alerts page shows each incident, its values and what it set off.
    with console_client(settings) as console:
        page = console.get("/alerts")
        live = console.get("/models/flight_delay/live")
        drift_links = re.findall(r'href="(/models/flight_delay/monitoring/[^"]+)"', live.text)
        report = console.get(drift_links[0]) if drift_links else None
    # Its live accuracy: the threshold drawn, the breaching windows marked (each point a link to
    # the version's record or the alert), the drift reports served.
    assert live.status_code == 200
    assert "alert threshold 1" in live.text and '"name": "alert"' in live.text
    assert f'"/models/{before.replace(":", "/")}"' in live.text  # points open the version
    for incident_id in triggers:
        if incident_id.startswith("accuracy"):
            assert f'href="/alerts#{incident_id}"' in live.text
    assert report is not None and report.status_code == 200
    assert page.status_code == 200
    _follow_a_red_point_to_the_features(settings, before)
    version = run.retrained["flight_delay"].version
    for incident_id in triggers:
        assert f'<tr id="{incident_id}">' in page.text
    assert f'href="/models/{version.replace(":", "/")}"' in page.text
    assert "webhook: opened sent" in page.text  # the webhook heard of them
    # The same windows again: judged once, so nothing opens, nothing is sent or retrained.
    again = monitoring.run(settings, ["flight_delay"], END + timedelta(hours=6), drain=False)
    assert again.incidents_opened == [] and again.retrained == {}
    assert incident.id in {i.id for i in again.open_incidents}
    assert len(received) == len(events)


def test_bad_input_is_named(replayed: Settings, loaded_project: Settings) -> None:
    with pytest.raises(ConfigError, match="no model named 'nope'"):
        monitoring.run(replayed, ["nope"])
    fresh = load_settings(make_project(replayed.project_dir.parent / "empty", None))
    fresh.redis.url = replayed.redis.url
    with pytest.raises(DataNotLoaded, match=r"no drained predictions|no logged predictions"):
        monitoring.run(fresh, ["flight_delay"], drain=False)


@pytest.fixture(scope="module")
def platform_prefect(replayed: Settings) -> Iterator[Settings]:
    """The replayed project's platform with its Prefect server up (`maquette up`, free port)."""
    try:
        platform.up(replayed, ["prefect"])
        yield replayed
    finally:
        platform.down(replayed)


def test_monitor_run_command_runs_the_prefect_flow_on_the_platforms_server(
    platform_prefect: Settings,
) -> None:
    from typer.testing import CliRunner

    from maquette.cli import app

    as_of = (END + timedelta(hours=6)).isoformat()
    project = str(platform_prefect.project_dir)
    command = ["monitor", "run", "--model", "flight_delay", "--as-of", as_of, "--project", project]
    result = CliRunner().invoke(app, command)
    with platform.prefect_api(platform_prefect):
        runs = _flow_runs("monitor")
    assert result.exit_code == 0, result.output
    assert "flight_delay" in result.output and "reports:" in result.output
    assert "monitor flow run on the platform's Prefect" in " ".join(result.output.split())
    # The server holds that run, Completed, with the command's arguments; the printed link is it.
    assert len(runs) == 1, f"monitor flow runs on the Prefect server: {runs}"
    (run,) = runs
    assert run.state is not None and run.state.is_completed(), run.state
    assert run.parameters["models"] == ["flight_delay"]
    assert f"/runs/flow-run/{run.id}" in "".join(result.output.split())


def _flow_runs(flow: str, deployment: str | None = None) -> list[Any]:
    """Runs of `flow` (of one of its deployments, if named) on the Prefect server in use."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowFilter,
        FlowFilterName,
    )

    with get_client(sync_client=True) as client:
        deployments = None
        if deployment is not None:
            found = client.read_deployment_by_name(f"{flow}/{deployment}")
            deployments = DeploymentFilter(id=DeploymentFilterId(any_=[found.id]))
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
            deployment_filter=deployments,
        )


def _final_run(flow: str, deployment: str, seconds: float, log: Path) -> Any:
    """The one run of FLOW/DEPLOYMENT once it has finished (any final state)."""
    deadline = time.monotonic() + seconds
    while True:
        runs = _flow_runs(flow, deployment)
        if len(runs) == 1 and runs[0].state is not None and runs[0].state.is_final():
            return runs[0]
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log.is_file() else "(no runner log)"
            raise AssertionError(
                f"no finished run of {flow}/{deployment} in {seconds:g} s: {runs}\n{tail}"
            )
        time.sleep(1)


def _logged(run_id: Any, pattern: str, seconds: float = 30) -> re.Match[str]:
    """The first line of a flow run's log (as the server has it) matching `pattern`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + seconds
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        for line in logs:
            if found := re.search(pattern, line.message):
                return found
        # The flow's log lines reach the server in batches, possibly after its final state.
        assert time.monotonic() < deadline, [line.message for line in logs]
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(900)  # an inline training, a monitoring pass, two trainings on the runner
def test_an_alert_retrains_through_the_train_deployment_and_promotes_only_when_asked(
    platform_prefect: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = platform_prefect.model_copy(deep=True)
    for name, promote in PROMOTE_RETRAINED.items():
        spec = settings.models[name].monitoring
        spec.retrain_on_alert, spec.promote_retrained = True, promote
    settings.models["flight_delay"].monitoring.thresholds.rmse_above = 1.0
    settings.models["late_arrival"].monitoring.thresholds.auc_below = 1.0
    production = {n: registry.resolve(settings, f"{n}@production").tag for n in MODELS}
    runner_log = settings.state_dir / "logs" / "deployments.log"
    try:
        with (
            platform.prefect_api(settings) as api,
            caplog.at_level(logging.WARNING, "maquette.monitoring"),
        ):
            # Before the runner serves train/<model>, a retraining runs inline and says why.
            inline = alerts.retrain(settings, "late_arrival").summary
            missing = f"the Prefect server at {api} has no deployment train/late_arrival"
            assert inline.startswith("trained candidate late_arrival:") and missing in inline
            assert f"retraining late_arrival inline: {missing}" in caplog.text

            platform.up(settings, ["deployments"])
            # Served once the runner has polled for its runs (Prefect marks it READY then).
            _wait_until_served(settings, [f"train/{n}" for n in MODELS], 120)
            versions = {n: {v.tag for v in registry.list_versions(settings, n)} for n in MODELS}
            run = monitoring.run(settings, list(MODELS), END + timedelta(hours=6), announce=print)
            assert {i.model for i in run.incidents_opened if i.kind == "accuracy"} >= set(MODELS)
            trained = {}
            for name in MODELS:
                done = _final_run("train", name, 240, runner_log)
                started = run.retrained[name]
                assert started.summary.startswith("started training run"), run.retrained
                assert f"({done.id}) of deployment train/{name}" in started.summary
                assert started.flow_run_id == str(done.id)
                assert done.state.is_completed(), (done.state, runner_log.read_text()[-3000:])
                promote = "production" if PROMOTE_RETRAINED[name] else None
                assert done.parameters["promote"] == promote, done.parameters
                trained[name] = _logged(done.id, rf"registered ({name}:v\d+)")[1]
        for name in MODELS:  # each run registered one new version, the one its log names
            new = {v.tag for v in registry.list_versions(settings, name)} - versions[name]
            assert new == {trained[name]}, (name, new, trained)
        # promote_retrained moved flight_delay's alias; late_arrival's stayed where it was.
        assert registry.resolve(settings, "flight_delay@production").tag == trained["flight_delay"]
        assert (
            registry.resolve(settings, "late_arrival@production").tag == production["late_arrival"]
        )
    finally:
        platform.down(settings, ["deployments"])
        for tag in production.values():
            registry.promote(settings, tag, "production")


def _wait_until_served(settings: Settings, deployments: list[str], seconds: float) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import DeploymentStatus

    deadline = time.monotonic() + seconds
    with platform.prefect_api(settings), get_client(sync_client=True) as client:
        while True:
            states = {n: client.read_deployment_by_name(n).status for n in deployments}
            if set(states.values()) == {DeploymentStatus.READY}:
                return
            assert time.monotonic() < deadline, f"no runner serves them: {states}"
            time.sleep(0.5)


def _late_arrivals_scored(settings: Settings) -> Any:
    """The replay's late_arrival predictions, drained from the log, with their labels."""
    prediction_log.drain(settings)
    labels.ingest_labels(settings, "late_arrival")
    return labels.join_labels(settings, "late_arrival", END + timedelta(hours=6))


def _own_reports(settings: Settings, folder: Path) -> Settings:
    """The settings with reports and an Evidently workspace of their own, in `folder`."""
    copy = settings.model_copy(deep=True)
    copy.paths.reports = folder / "reports"
    copy.monitoring.workspace = folder / "evidently"
    return copy


def test_an_unchanged_window_report_is_kept_and_a_changed_one_redone(
    replayed: Settings, tmp_path: Path
) -> None:
    settings = _own_reports(replayed, tmp_path)
    scored = _late_arrivals_scored(replayed)
    said: list[str] = []
    (first,) = drift.window_reports(settings, "late_arrival", scored, said.append)
    assert len(said) == 1 and first.workspace_runs
    written = Path(first.html).stat().st_mtime_ns
    # The same rows again: the report is kept, not recomputed (no Evidently run, same file).
    (kept,) = drift.window_reports(settings, "late_arrival", scored, said.append)
    assert len(said) == 1, said
    assert kept.workspace_runs == first.workspace_runs
    assert Path(kept.html).stat().st_mtime_ns == written
    # Fewer rows in the window: redone, its Evidently runs replaced.
    (redone,) = drift.window_reports(
        settings, "late_arrival", scored.slice(0, scored.num_rows - 10), said.append
    )
    assert len(said) == 2 and redone.rows == first.rows - 10
    assert set(redone.workspace_runs).isdisjoint(first.workspace_runs)
    assert Path(redone.html).stat().st_mtime_ns > written


def test_a_window_report_compares_samples_of_the_window_and_the_training_rows(
    replayed: Settings, tmp_path: Path
) -> None:
    scored = _late_arrivals_scored(replayed)
    found = []
    for folder in ("one", "two"):
        settings = _own_reports(replayed, tmp_path / folder)
        settings.monitoring.report_rows = 100
        settings.monitoring.reference_rows = 150
        settings.monitoring.reference = "training"  # the training split, sampled
        (report,) = drift.window_reports(settings, "late_arrival", scored)
        found.append(report)
    report = found[0]
    assert report.rows == scored.num_rows > 100
    assert report.sampled_rows == 100
    assert report.reference_rows == 150
    assert f"current window sampled: 100 of {report.rows:,} rows" in report.note
    assert "reference (training): training split of late_arrival:v1: 150 sampled" in report.note
    # Seeded samples: the same report twice.
    assert found[1].feature_drift == report.feature_drift
    assert found[1].prediction_drift == report.prediction_drift


def _follow_a_red_point_to_the_features(settings: Settings, served: str) -> None:
    """In a real browser: a red point on the live accuracy chart (a breaching window) opens the
    record of the version that served it, whose feature links open the catalog with each
    view's freshness."""
    from playwright.sync_api import sync_playwright

    from maquette.console.browser import VIEWPORT, chromium_path, serve_in_thread

    name, version = served.split(":")
    with serve_in_thread(settings) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        page.goto(f"{url}/models/{name}/live")
        page.wait_for_load_state("networkidle")
        # A red point (every window breaches the tight threshold): click it where it is drawn.
        red = page.locator("#accuracy .scatterlayer .trace").last
        box = red.locator(".points path").first.bounding_box()
        assert box is not None
        with page.expect_navigation():
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert page.url.endswith(f"/models/{name}/{version}"), page.url
        link = page.locator("a[href^='/features#view-']").first
        view = (link.get_attribute("href") or "").split("#view-")[1]
        link.click()
        page.wait_for_load_state("networkidle")
        assert page.url.endswith(f"/features#view-{view}")
        row = page.locator(f"tr:has(a[href='#view-{view}'])")
        assert "days" in row.inner_text() or " h" in row.inner_text()  # its freshness
        browser.close()
