"""Incidents: the state machine on verdicts of judged windows, severity, the webhook on open
and on resolve (a real HTTP server on loopback), and `maquette monitor alerts`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from maquette.config import Settings, load_settings
from maquette.monitoring import incidents
from maquette.monitoring.freshness import Freshness
from maquette.monitoring.verdicts import (
    ANY_FEATURE,
    BREACH,
    CLEAR,
    NOT_ENOUGH,
    Finding,
    Verdict,
    accuracy_finding,
    accuracy_verdicts,
    freshness_verdicts,
    iso,
    missing_share_verdicts,
    missing_verdicts,
)
from maquette.version_record import Metrics, PartitionMetrics, SplitMetrics, VersionRecord
from tests.conftest import make_project

DAY0 = datetime(2013, 12, 2, tzinfo=UTC)


@pytest.fixture()
def settings(tmp_path: Path, running_redis: str) -> Settings:
    """A project of its own (its own incident store), on this module's Redis database."""
    folder = make_project(tmp_path / "project", running_redis.rsplit("/", 1)[0] + "/4")
    loaded = load_settings(folder)
    # The state machine's cases are written for incidents that open on their first breach.
    for spec in loaded.models.values():
        spec.monitoring.open_after = 1
    return loaded


def day(n: int) -> tuple[str, str]:
    return iso(DAY0 + timedelta(days=n)), iso(DAY0 + timedelta(days=n + 1))


def verdict(
    status: str,
    n: int,
    subject: str = "all",
    columns: tuple[str, ...] = ("rmse",),
    severity: str = "warning",
    model: str = "flight_delay",
    kind: str = "accuracy",
) -> Verdict:
    """The verdict of daily window `n` (from DAY0) for one key, a breach with `columns`."""
    start, end = day(n)
    finding = None
    if status == BREACH:
        finding = Finding(
            list(columns),
            dict.fromkeys(columns, 2.0),
            dict.fromkeys(columns, 1.0),
            severity,  # type: ignore[arg-type]
            f"breach on day {n}",
        )
    return Verdict(kind, model, subject, start, end, status, finding)


def at(n: int) -> datetime:
    """A pass a few hours after daily window `n` ended."""
    return DAY0 + timedelta(days=n + 1, hours=3)


def test_opens_once_across_breaching_windows_and_lists_columns_and_windows(
    settings: Settings,
) -> None:
    first = incidents.update(
        settings,
        [verdict(BREACH, 0), verdict(BREACH, 1, columns=("rmse", "bias")), verdict(CLEAR, -1)],
        at(1),
    )
    (opened,) = first.opened
    assert opened.id == "accuracy:flight_delay:all#1" and opened.status == "open"
    assert opened.opened_at == iso(at(1)) and opened.resolved_at is None
    assert opened.columns == ["bias", "rmse"]
    assert [(w["start"], w["end"]) for w in opened.windows] == [day(0), day(1)]
    assert (opened.first_window_start, opened.last_window_end) == (day(0)[0], day(1)[1])
    assert opened.message == "breach on day 1"
    # Still breaching: the same incident grows, no new one opens.
    second = incidents.update(settings, [verdict(BREACH, 2, columns=("mae",))], at(2))
    assert second.opened == [] and second.resolved == []
    (grown,) = second.updated
    assert grown.id == opened.id and grown.columns == ["bias", "mae", "rmse"]
    assert grown.column_first_seen == {
        "rmse": iso(at(1)),
        "bias": iso(at(1)),
        "mae": iso(at(2)),
    }
    assert len(grown.windows) == 3 and grown.last_window_end == day(2)[1]
    assert [i.id for i in second.open] == [opened.id]
    (stored,) = incidents.load(settings, "open")
    assert stored == grown
    assert incidents.load(settings, "resolved") == []
    assert json.loads(incidents.incidents_path(settings).read_text())["incidents"][0]["id"] == (
        opened.id
    )


def test_a_window_judged_twice_is_applied_once(settings: Settings) -> None:
    settings.models["flight_delay"].monitoring.open_after = 2
    # The same breaching window in two passes is one breach, not the two that open.
    assert incidents.update(settings, [verdict(BREACH, 0)], at(0)).opened == []
    assert incidents.update(settings, [verdict(BREACH, 0)], at(0) + timedelta(hours=1)).open == []
    # Two windows of one version side by side with another's: one judged window.
    twin = verdict(CLEAR, 1)
    changes = incidents.update(settings, [verdict(BREACH, 1), twin], at(1))
    (opened,) = changes.opened  # breach of either version is the window's breach
    assert len(opened.windows) == 2
    again = incidents.update(settings, [verdict(BREACH, 0), verdict(BREACH, 1)], at(2))
    assert again.opened == again.updated == [] and len(again.open[0].windows) == 2


def test_not_enough_data_neither_opens_nor_resolves(settings: Settings) -> None:
    quiet = incidents.update(settings, [verdict(NOT_ENOUGH, n) for n in range(5)], at(4))
    assert quiet.opened == quiet.open == []
    assert incidents.load(settings) == []
    opened = incidents.update(settings, [verdict(BREACH, 5)], at(5)).opened
    assert len(opened) == 1
    held = incidents.update(settings, [verdict(NOT_ENOUGH, 6), verdict(NOT_ENOUGH, 7)], at(7))
    assert held.resolved == [] and [i.id for i in held.open] == [opened[0].id]
    assert len(held.open[0].windows) == 1  # a window without enough data is not listed
    assert len(incidents.update(settings, [verdict(CLEAR, 8)], at(8)).resolved) == 1


def test_not_enough_data_does_not_break_a_run_of_breaches(settings: Settings) -> None:
    settings.models["flight_delay"].monitoring.open_after = 2
    found = [verdict(BREACH, 0), verdict(NOT_ENOUGH, 1), verdict(BREACH, 2)]
    (opened,) = incidents.update(settings, found, at(2)).opened
    assert [w["start"] for w in opened.windows] == [day(0)[0], day(2)[0]]


def test_resolves_on_clear_and_a_later_breach_opens_a_new_incident(settings: Settings) -> None:
    (first,) = incidents.update(settings, [verdict(BREACH, 0)], at(0)).opened
    changes = incidents.update(settings, [verdict(CLEAR, 1)], at(1))
    (resolved,) = changes.resolved
    assert resolved.id == first.id and resolved.status == "resolved"
    assert resolved.resolved_at == iso(at(1)) and changes.open == []
    (second,) = incidents.update(settings, [verdict(BREACH, 2)], at(2)).opened
    assert second.id == "accuracy:flight_delay:all#2" and second.opened_at == iso(at(2))
    assert [i.status for i in incidents.load(settings)] == ["resolved", "open"]
    # Windows are applied in window order, whatever order the pass lists them in.
    (third,) = incidents.update(
        settings, [verdict(BREACH, 5), verdict(CLEAR, 4), verdict(CLEAR, 3)], at(5)
    ).opened
    assert [w["start"] for w in third.windows] == [day(5)[0]]
    assert [i.status for i in incidents.load(settings)] == ["resolved", "resolved", "open"]


def test_by_default_accuracy_and_missing_features_wait_for_a_second_window_and_skew_does_not(
    settings: Settings,
) -> None:
    settings.models["flight_delay"].monitoring.open_after = 2  # the default
    missing = dict(kind="missing_features", columns=("carrier_dep_delay_7d",))
    skewed = dict(kind="skew", columns=("origin_dep_delay_7d",))
    first = [verdict(BREACH, 0), verdict(BREACH, 0, **missing), verdict(BREACH, 0, **skewed)]
    changes = incidents.update(settings, first, at(0))
    assert [i.kind for i in changes.opened] == ["skew"]
    second = [verdict(BREACH, 1), verdict(BREACH, 1, **missing)]
    opened = incidents.update(settings, second, at(1)).opened
    assert sorted(i.kind for i in opened) == ["accuracy", "missing_features"]
    assert all(len(i.windows) == 2 for i in opened)
    assert type(settings.models["flight_delay"].monitoring).model_fields["open_after"].default == 2


def test_open_after_and_resolve_after(settings: Settings) -> None:
    spec = settings.models["flight_delay"].monitoring
    spec.open_after, spec.resolve_after = 3, 2
    # Two breaches, a clear window, two breaches: never three in a row.
    broken = [verdict(s, n) for n, s in enumerate([BREACH, BREACH, CLEAR, BREACH, BREACH])]
    assert incidents.update(settings, broken, at(4)).opened == []
    (opened,) = incidents.update(settings, [verdict(BREACH, 5)], at(5)).opened
    assert [w["start"] for w in opened.windows] == [day(n)[0] for n in (3, 4, 5)]
    assert opened.first_window_start == day(3)[0]
    # One clear window, a breach, one clear window: still open; two in a row resolve it.
    flicker = [verdict(CLEAR, 6), verdict(BREACH, 7, columns=("r2",)), verdict(CLEAR, 8)]
    changes = incidents.update(settings, flicker, at(8))
    assert changes.resolved == [] and changes.updated[0].columns == ["r2", "rmse"]
    (resolved,) = incidents.update(settings, [verdict(CLEAR, 9)], at(9)).resolved
    assert resolved.id == opened.id and resolved.resolved_at == iso(at(9))


def test_subjects_and_models_are_incidents_of_their_own(settings: Settings) -> None:
    found = [
        verdict(BREACH, 0, "EWR"),
        verdict(BREACH, 0, "JFK"),
        verdict(CLEAR, 0, "all"),
        verdict(BREACH, 0, model="late_arrival", columns=("log_loss",)),
        verdict(BREACH, 0, kind="drift", columns=("temp", "wind_speed")),
    ]
    opened = incidents.update(settings, found, at(0)).opened
    assert sorted(i.id for i in opened) == [
        "accuracy:flight_delay:EWR#1",
        "accuracy:flight_delay:JFK#1",
        "accuracy:late_arrival:all#1",
        "drift:flight_delay:all#1",
    ]
    (resolved,) = incidents.update(settings, [verdict(CLEAR, 1, "JFK")], at(1)).resolved
    assert resolved.subject == "JFK"
    assert {i.subject for i in incidents.load(settings, "open") if i.kind == "accuracy"} == {
        "EWR",
        "all",
    }


def _view(newest: datetime | None, as_of: datetime, ttl_s: float = 3 * 3600) -> Freshness:
    age = (as_of - newest).total_seconds() if newest else None
    stale = newest is None or (age is not None and age > ttl_s)
    return Freshness("weather_hourly", ttl_s, newest, age, stale, ["wind_speed", "temp"])


def test_freshness_is_judged_at_every_pass(settings: Settings) -> None:
    newest = DAY0 + timedelta(hours=10)
    passes = [DAY0 + timedelta(hours=h) for h in (12, 14, 15, 15, 20, 21)]
    states = []
    for when in passes:
        found = freshness_verdicts([_view(newest, when)], when)
        changes = incidents.update(settings, found, when)
        states.append((len(changes.opened), len(changes.resolved), len(changes.open)))
    # Fresh at 12:00, stale from 14:00 (4 h > TTL 3 h); the same pass time twice is two passes.
    assert states == [(0, 0, 0), (1, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 1)]
    (incident,) = incidents.load(settings, "open")
    assert incident.id == "freshness:weather_hourly#1" and incident.model is None
    assert incident.columns == ["temp", "wind_speed"]
    # One stale spell with an unmoved newest value: one window, from that value to the pass.
    assert [(w["start"], w["end"]) for w in incident.windows] == [(iso(newest), iso(passes[-1]))]
    # 4 h old is a warning; 10 h (over twice the TTL) makes it critical.
    assert incident.windows[0]["severity"] == "critical" and incident.severity == "critical"
    assert "weather_hourly" in incident.message and "materializ" in incident.message
    later = DAY0 + timedelta(hours=22)
    fresh = freshness_verdicts([_view(later - timedelta(hours=1), later)], later)
    (resolved,) = incidents.update(settings, fresh, later).resolved
    assert resolved.id == incident.id and resolved.resolved_at == iso(later)
    empty = freshness_verdicts([_view(None, later)], later)
    assert empty[0].status == BREACH and empty[0].finding is not None
    assert empty[0].finding.severity == "critical" and "no values" in empty[0].finding.message


def test_severity_is_the_worst_of_an_incidents_windows(settings: Settings) -> None:
    (opened,) = incidents.update(settings, [verdict(BREACH, 0)], at(0)).opened
    assert opened.severity == "warning"
    changes = incidents.update(settings, [verdict(BREACH, 1, severity="critical")], at(1))
    assert changes.updated[0].severity == "critical"
    changes = incidents.update(settings, [verdict(BREACH, 2)], at(2))
    assert changes.updated[0].severity == "critical"  # once critical, it stays so while open


def _record(task: str = "regression") -> VersionRecord:
    """A version's record with the test metrics the accuracy checks compare against."""
    partitions = {
        "EWR": PartitionMetrics(model={"rmse": 20.0}, baseline={}, served_by="EWR"),
    }
    test = SplitMetrics(
        model={"rmse": 40.0, "log_loss": 0.5}, baseline={}, partitions=partitions, routed_rows={}
    )
    metrics = Metrics(validation=test, test=test)
    return VersionRecord.model_construct(task=task, version="v3", metrics=metrics)


def _window_row(partition: str, **metrics: float) -> dict[str, Any]:
    start, end = day(0)
    return {
        "version": "v3",
        "partition": partition,
        "window": "daily",
        "window_start": start,
        "window_end": end,
        "labelled": 120,
        **metrics,
    }


def test_accuracy_against_the_test_metrics_of_the_partition(settings: Settings) -> None:
    limits = settings.monitoring_of("flight_delay").thresholds
    limits.rmse_above, limits.bias_above = None, 5.0
    assert limits.worse_than_test == 0.5
    record = _record()
    # EWR's test RMSE is 20: 29 is 45% worse (fine), 31 is 55% worse, 41 over twice the margin.
    assert accuracy_finding("flight_delay", _window_row("EWR", rmse=29.0), limits, record) is None
    warn = accuracy_finding("flight_delay", _window_row("EWR", rmse=31.0), limits, record)
    assert warn is not None and warn.columns == ["rmse"] and warn.severity == "warning"
    assert warn.limits == {"rmse": pytest.approx(30.0)} and warn.values == {"rmse": 31.0}
    assert "55% worse than the test rmse 20 of flight_delay:v3" in warn.message
    assert "partition EWR" in warn.message and "maquette train flight_delay" in warn.message
    bad = accuracy_finding("flight_delay", _window_row("EWR", rmse=41.0), limits, record)
    assert bad is not None and bad.severity == "critical"
    # A partition without test metrics of its own is compared with the version's overall 40.
    assert accuracy_finding("flight_delay", _window_row("LGA", rmse=55.0), limits, record) is None
    # Bias: |mean(prediction - label)| above the limit, in either direction.
    biased = accuracy_finding(
        "flight_delay", _window_row("all", rmse=40.0, bias=-7.0), limits, record
    )
    assert biased is not None and biased.columns == ["bias"] and biased.values == {"bias": 7.0}
    # Absolute limits: AUC below (its baseline is a perfect 1), log loss vs test for binary.
    binary = settings.monitoring_of("late_arrival").thresholds
    assert binary.auc_below == 0.6
    low = accuracy_finding(
        "late_arrival", _window_row("all", auc=0.55, log_loss=0.6), binary, _record("binary")
    )
    assert low is not None and low.columns == ["auc"] and low.severity == "warning"
    worst = accuracy_finding(
        "late_arrival", _window_row("all", auc=0.1, log_loss=0.8), binary, _record("binary")
    )
    assert worst is not None and worst.columns == ["auc", "log_loss"]
    assert worst.severity == "critical"  # 1 - 0.1 is more than twice 1 - 0.6


def test_a_window_short_of_labels_waits_for_them_until_label_wait(settings: Settings) -> None:
    assert settings.monitoring.label_wait == "1d"
    start, end = day(0)
    series = pd.DataFrame(
        [
            {**_window_row("all"), "labelled": 3, "complete": True, "enough_labels": False},
            {
                **_window_row("all"),
                "window_start": day(1)[0],
                "window_end": day(1)[1],
                "complete": False,
                "enough_labels": False,
            },
        ]
    )
    # Neither the open window nor the short one (labels may still come) is judged yet ...
    assert (
        accuracy_verdicts(settings, "flight_delay", series, DAY0 + timedelta(days=1, hours=6)) == []
    )
    # ... and a day after its end, the short window is final: not enough data.
    (final,) = accuracy_verdicts(settings, "flight_delay", series, DAY0 + timedelta(days=2))
    assert (final.status, final.window_start, final.window_end) == (NOT_ENOUGH, start, end)


def _missing_frame(rates: dict[str, tuple[float, float]], predictions: int = 200) -> pd.DataFrame:
    start, end = day(0)
    rows = [
        {
            "model": "flight_delay",
            "version": "v3",
            "partition": "all",
            "window": "daily",
            "window_start": pd.Timestamp(start),
            "window_end": pd.Timestamp(end),
            "complete": True,
            "predictions": predictions,
            "feature": feature,
            "missing": int(rate * predictions),
            "missing_rate": rate,
            "training_rate": trained,
        }
        for feature, (rate, trained) in rates.items()
    ]
    return pd.DataFrame(rows)


def test_missing_features_per_feature_against_their_training_null_rate(
    settings: Settings,
) -> None:
    frame = _missing_frame(
        {"dep_delay_mean": (0.34, 0.01), "seats": (0.32, 0.30), "temp": (0.08, 0.0)}
    )
    (found,) = missing_verdicts(settings, "flight_delay", frame)
    assert found.status == BREACH and found.finding is not None
    # seats is as often missing as in training: not listed; temp +8% over the 5% limit.
    assert found.finding.columns == ["dep_delay_mean", "temp"]
    assert found.finding.severity == "critical"  # +33% is over twice the 5% limit
    assert "dep_delay_mean 34.0% (training 1.0%)" in found.finding.message
    assert "more predictions than usual" in found.finding.message
    (small,) = missing_verdicts(settings, "flight_delay", _missing_frame({"temp": (0.5, 0)}, 10))
    assert small.status == NOT_ENOUGH  # 10 predictions < min_rows 30
    (fine,) = missing_verdicts(settings, "flight_delay", _missing_frame({"temp": (0.04, 0.0)}))
    assert fine.status == CLEAR and fine.finding is None
    # The demo's whole-window limit (missing_feature_rate_above 0.5) is the same kind.
    series = pd.DataFrame(
        [{**_window_row("all"), "predictions": 200, "complete": True, "missing_feature_rate": 0.6}]
    )
    (share,) = missing_share_verdicts(settings, "flight_delay", series)
    assert share.status == BREACH and share.finding is not None
    assert share.finding.columns == [ANY_FEATURE] and share.key == found.key
    (opened,) = incidents.update(settings, [found, share], at(0)).opened
    assert opened.columns == [ANY_FEATURE, "dep_delay_mean", "temp"]


@pytest.fixture()
def webhook() -> Iterator[tuple[str, list[dict[str, Any]], list[bool]]]:
    """A real HTTP endpoint on loopback that keeps what it is sent; answers 503 while told to."""
    received: list[dict[str, Any]] = []
    failing = [False]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if failing[0]:
                self.send_response(503)
            else:
                received.append(body)
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/incidents", received, failing
    server.shutdown()


def test_the_webhook_hears_of_each_open_and_resolve_once(
    settings: Settings, webhook: tuple[str, list[dict[str, Any]], list[bool]]
) -> None:
    url, received, _ = webhook
    settings.monitoring.webhook = url
    incidents.update(settings, [verdict(BREACH, 0)], at(0))
    assert incidents.notify(settings) is None
    assert [(r["source"], r["event"]) for r in received] == [("maquette", "opened")]
    assert received[0]["incident"]["id"] == "accuracy:flight_delay:all#1"
    assert received[0]["incident"]["columns"] == ["rmse"]
    incidents.update(settings, [verdict(BREACH, 1)], at(1))
    assert incidents.notify(settings) is None and len(received) == 1  # no new event
    incidents.update(settings, [verdict(CLEAR, 2)], at(2))
    assert incidents.notify(settings) is None
    assert [r["event"] for r in received] == ["opened", "resolved"]
    assert received[1]["incident"]["status"] == "resolved"
    assert received[1]["incident"]["resolved_at"] == iso(at(2))
    assert incidents.notify(settings) is None and len(received) == 2
    (stored,) = incidents.load(settings)
    assert stored.notified == {"opened": True, "resolved": True}


def test_a_failed_webhook_is_retried_at_the_next_pass(
    settings: Settings, webhook: tuple[str, list[dict[str, Any]], list[bool]]
) -> None:
    url, received, failing = webhook
    settings.monitoring.webhook = url
    failing[0] = True
    incidents.update(settings, [verdict(BREACH, 0)], at(0))
    error = incidents.notify(settings)
    assert error is not None and "503" in error and "next pass" in error
    # Its host and port, not its path: a webhook's path often holds its token.
    assert url.rsplit("/", 1)[0].removeprefix("http://") in error and url not in error
    assert received == [] and incidents.load(settings)[0].notified["opened"] is False
    # Down at the next pass too, and the incident resolved meanwhile: both events wait.
    incidents.update(settings, [verdict(CLEAR, 1)], at(1))
    assert incidents.notify(settings) is not None and received == []
    failing[0] = False
    assert incidents.notify(settings) is None
    assert [r["event"] for r in received] == ["opened", "resolved"]
    # A webhook nobody listens on: the error says so, the event is kept.
    settings.monitoring.webhook = "http://127.0.0.1:9/nowhere"
    incidents.update(settings, [verdict(BREACH, 3)], at(3))
    assert "127.0.0.1:9" in (incidents.notify(settings) or "")
    settings.monitoring.webhook = url
    assert incidents.notify(settings) is None
    assert [r["incident"]["id"] for r in received][-1] == "accuracy:flight_delay:all#2"


def test_without_a_webhook_nothing_waits(settings: Settings) -> None:
    incidents.update(settings, [verdict(BREACH, 0)], at(0))
    assert settings.monitoring.webhook is None and incidents.notify(settings) is None
    assert incidents.load(settings)[0].notified == {"opened": True, "resolved": False}


def test_old_judged_windows_are_remembered_by_a_watermark(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(incidents, "KEEP_JUDGED", 3)
    incidents.update(settings, [verdict(CLEAR, n) for n in range(6)], at(5))
    state = json.loads(incidents.incidents_path(settings).read_text())["keys"]
    (kept,) = state.values()
    assert [w[0] for w in kept["judged"]] == [day(n)[0] for n in (3, 4, 5)]
    assert kept["judged_before"] == day(2)[1]
    # A window older than the watermark is not judged again (its breach was seen, or final).
    assert incidents.update(settings, [verdict(BREACH, 1)], at(6)).opened == []
    assert len(incidents.update(settings, [verdict(BREACH, 6)], at(6)).opened) == 1


def _invoke(settings: Settings, *args: str) -> Any:
    from typer.testing import CliRunner

    from maquette.cli import app

    command = ["monitor", "alerts", *args, "--project", str(settings.project_dir)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    return result


def test_monitor_alerts_lists_open_incidents_first_and_resolved_with_all(
    settings: Settings,
) -> None:
    assert "open incidents (0)" in _invoke(settings).output
    incidents.update(
        settings,
        [
            verdict(BREACH, 0, "EWR", columns=("rmse", "bias"), severity="critical"),
            verdict(BREACH, 0, model="late_arrival", columns=("log_loss",)),
        ],
        at(0),
    )
    incidents.update(settings, [verdict(CLEAR, 1, model="late_arrival")], at(1))
    out = _invoke(settings).output
    assert "open incidents (1)" in out and "accuracy:flight_delay:EWR#1" in out
    assert "critical" in out and "bias, rmse" in out and "breach on day 0" in out
    assert "late_arrival" not in out and "--all" in out
    everything = _invoke(settings, "--all").output
    assert "resolved incidents (1)" in everything and "accuracy:late_arrival:all#1" in everything
    assert everything.index("open incidents") < everything.index("resolved incidents")
    only = _invoke(settings, "--all", "--model", "late_arrival").output
    assert "open incidents (0)" in only and "accuracy:late_arrival:all#1" in only
    document = json.loads(_invoke(settings, "--all", "--json").stdout)
    assert [i["id"] for i in document["open"]] == ["accuracy:flight_delay:EWR#1"]
    (resolved,) = document["resolved"]
    assert resolved["id"] == "accuracy:late_arrival:all#1" and resolved["status"] == "resolved"
    assert resolved["resolved_at"] == iso(at(1)) and resolved["columns"] == ["log_loss"]
    assert document["open"][0]["windows"][0]["start"] == day(0)[0]
    assert set(json.loads(_invoke(settings, "--json").stdout)) == {"open"}


def test_monitor_alerts_names_an_unknown_model(settings: Settings) -> None:
    from typer.testing import CliRunner

    from maquette.cli import app

    result = CliRunner().invoke(
        app, ["monitor", "alerts", "--model", "nope", "--project", str(settings.project_dir)]
    )
    assert result.exit_code == 2 and "no model named 'nope'" in result.output


def test_a_view_with_no_value_reaches_the_webhook_as_plain_json(
    settings: Settings, webhook: tuple[str, list[dict[str, Any]], list[bool]]
) -> None:
    """A view with nothing stored has no age: the event must still be JSON a webhook reads."""
    url, received, _ = webhook
    settings.monitoring.webhook = url
    empty = Freshness("weather_hourly", 3 * 3600.0, None, None, True, ["temp", "dewp"])
    incidents.update(settings, freshness_verdicts([empty], at(0)), at(0))
    assert incidents.notify(settings) is None
    (event,) = received
    assert event["event"] == "opened" and event["incident"]["subject"] == "weather_hourly"
    assert event["incident"]["severity"] == "critical"
    assert event["incident"]["windows"][0]["values"] == {"dewp": -1.0, "temp": -1.0}


def test_a_value_json_cannot_hold_reaches_the_webhook_as_null(
    settings: Settings, webhook: tuple[str, list[dict[str, Any]], list[bool]]
) -> None:
    """A p-value Evidently could not compute (NaN) must not hold back this or later events."""
    url, received, _ = webhook
    settings.monitoring.webhook = url
    broken = verdict(BREACH, 0, kind="drift", columns=("temp",))
    assert broken.finding is not None
    broken.finding.values["temp"] = float("nan")
    incidents.update(settings, [broken], at(0))
    assert incidents.notify(settings) is None
    (event,) = received
    assert event["incident"]["windows"][0]["values"] == {"temp": None}
