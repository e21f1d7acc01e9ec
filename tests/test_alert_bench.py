"""`maquette bench alerts`: the faults file says clearly what is wrong with it, and on a small
replay of December (real Redis, Feast, stream processor, Predictor, monitoring passes) each
injected fault is found by the incident the file expects, while the clean replay raises none
of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from maquette.bench.alerts import alert_benchmark
from maquette.bench.alerts_facts import Facts
from maquette.bench.alerts_faults import LabelShift, StaleView, load_faults, parse_faults
from maquette.bench.alerts_inject import check_faults
from maquette.config import Settings
from maquette.errors import ConfigError
from maquette.features.layer import FeatureLayer
from maquette.window_spec import parse_window

DEMO_FAULTS = (
    Path(__file__).resolve().parent.parent / "maquette/examples/nycflights13/alert_faults.yaml"
)
REPLAY = {"start": "2013-12-02", "end": "2013-12-04", "slot": "1h", "pass_every": "12h"}


def _fault(**overrides: Any) -> dict[str, Any]:
    fault = {
        "name": "weather stale",
        "kind": "stale_view",
        "start": "2013-12-02T12:00:00Z",
        "days": 0.75,
        "view": "weather_hourly",
        "expect": {"kind": "freshness", "subject": "weather_hourly"},
    }
    return {**fault, **overrides}


def _problem(data: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_faults(data, "faults.yaml")
    return str(caught.value)


def test_demo_faults_file_declares_four_kinds_within_december() -> None:
    plan = load_faults(DEMO_FAULTS)
    assert {f.kind for f in plan.faults} == {
        "null_features",
        "stale_view",
        "label_shift",
        "unit_skew",
    }
    assert plan.replay.start == datetime(2013, 12, 1, tzinfo=UTC)
    assert all(plan.replay.start <= f.start and f.end < plan.replay.end for f in plan.faults)
    assert len({f.start for f in plan.faults}) == 4  # different onsets


def test_fault_of_unknown_kind_names_the_fault_and_the_kinds() -> None:
    message = _problem({"replay": REPLAY, "faults": [_fault(kind="meteor")]})
    assert "faults[0] ('weather stale')" in message
    assert "null_features" in message and "stale_view" in message


def test_fault_without_expectation_or_parameter_says_which_field() -> None:
    fault = _fault()
    del fault["expect"], fault["view"]
    message = _problem({"replay": REPLAY, "faults": [fault]})
    assert "faults[0] ('weather stale').expect: Field required" in message
    assert "faults[0] ('weather stale').view: Field required" in message


def test_fault_outside_the_replay_and_unknown_field_are_refused() -> None:
    message = _problem({"replay": REPLAY, "faults": [_fault(start="2014-02-01")]})
    assert "outside the replay" in message
    message = _problem({"replay": REPLAY, "faults": [_fault(colour="red")]})
    assert "colour: Extra inputs are not permitted" in message


def test_unit_skew_that_changes_nothing_and_bad_durations_are_refused() -> None:
    skew = _fault(kind="unit_skew", view="origin_daily", feature="origin_dep_delay_7d")
    assert "set scale or offset" in _problem({"replay": REPLAY, "faults": [skew]})
    every = {**REPLAY, "pass_every": "6 hours"}
    assert "replay.pass_every" in _problem({"replay": every, "faults": [_fault()]})
    odd = {**REPLAY, "slot": "2h", "pass_every": "3h"}
    assert "not a whole number of slots" in _problem({"replay": odd, "faults": [_fault()]})


def test_missing_file_and_bad_yaml_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_faults(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("replay: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_faults(bad)


def test_faults_naming_what_the_project_lacks_are_listed_together(
    loaded_project: Settings,
) -> None:
    plan = parse_faults(
        {
            "replay": REPLAY,
            "faults": [
                _fault(view="rainfall"),
                _fault(
                    name="unit",
                    kind="unit_skew",
                    view="origin_daily",
                    feature="origin_delay_hours",
                    scale=60,
                    expect={"kind": "skew", "model": "taxi_fare"},
                ),
                {
                    "name": "shift",
                    "kind": "label_shift",
                    "start": "2013-12-02",
                    "days": 1,
                    "model": "flight_delay",
                    "add": 30,
                    "where": "airport = 'LGA'",
                    "expect": {"kind": "accuracy", "model": "flight_delay"},
                },
            ],
        }
    )
    with pytest.raises(ConfigError) as caught:
        check_faults(loaded_project, FeatureLayer(loaded_project), plan)
    message = str(caught.value)
    assert "no feature view 'rainfall'" in message
    assert "no feature ['origin_delay_hours']" in message
    assert "no model 'taxi_fare'" in message
    # The SQL is checked only once the names are right: fix them, and it is run.
    plan.faults = [f for f in plan.faults if isinstance(f, LabelShift)]
    with pytest.raises(ConfigError, match="fault 'shift': its SQL does not run"):
        check_faults(loaded_project, FeatureLayer(loaded_project), plan)


SMALL_FAULTS = """
replay: {start: 2013-12-02T00:00:00Z, end: 2013-12-04T00:00:00Z, slot: 1h, pass_every: 12h}
faults:
  - name: AA carrier stats null
    kind: null_features           # two days: missing-features incidents open on a second window
    start: 2013-12-02T00:00:00Z
    days: 2
    view: carrier_daily
    where: "carrier = 'AA'"
    expect: {kind: missing_features, model: flight_delay, columns: [carrier_dep_delay_7d]}
  - name: weather stale
    kind: stale_view
    start: 2013-12-02T12:00:00Z
    days: 0.75
    view: weather_hourly
    expect: {kind: freshness, subject: weather_hourly}
  - name: LGA arrivals later
    kind: label_shift             # two days: accuracy incidents open on a second bad window
    start: 2013-12-02T00:00:00Z
    days: 2
    model: flight_delay
    add: 90
    where: "origin = 'LGA'"
    expect: {kind: accuracy, model: flight_delay, subject: LGA}
  - name: origin delay in seconds
    kind: unit_skew
    start: 2013-12-02T00:00:00Z
    days: 1
    view: origin_daily
    feature: origin_dep_delay_7d
    scale: 60
    expect: {kind: skew, model: flight_delay, columns: [origin_dep_delay_7d]}
"""


@pytest.mark.slow
def test_small_replay_finds_each_fault_and_the_clean_replay_raises_none(
    production: dict[str, str], loaded_project: Settings, tmp_path: Path
) -> None:
    plan = parse_faults(yaml.safe_load(SMALL_FAULTS))
    result = alert_benchmark(
        loaded_project, plan, "small", (6, 8), tmp_path / "alerts", references=False
    )
    clean, faulty = result.runs["clean"], result.runs["faulty"]
    for run in (clean, faulty):
        assert run.failures == 0 and run.rows > 300 and run.events > 1000
        assert run.late_events == 0 and len(run.passes) == 4
    assert {e.what for e in faulty.fault_events} >= {"onset", "repair", "labels ingested"}
    found = {f.name: f for f in result.faults}
    missed = {f.name: f.during for f in result.faults if not f.detected}
    assert not missed, f"not found (incidents opened meanwhile): {missed}"
    for fault in plan.faults:
        hit = found[fault.name]
        assert hit.incident is not None and hit.incident["kind"] == fault.expect.kind
        assert set(fault.expect.columns) <= set(hit.incident["columns"])
        # Found at the first pass that judges the window holding the onset; accuracy and missing
        # features wait for their second breaching window (`open_after: 2`), judged at the
        # replay's last pass.
        limit = 48 if fault.expect.kind in ("accuracy", "missing_features") else 36
        assert hit.hours_to_detect is not None and 0 < hit.hours_to_detect <= limit
        assert hit.windows_to_detect is not None and hit.windows_to_detect <= 2
    stale = next(f for f in plan.faults if isinstance(f, StaleView))
    assert found[stale.name].resolved  # materialized again at repair: fresh at the next pass
    raised = [r for r in result.incidents if r.run == "clean"]
    for fault in plan.faults:
        want = fault.expect
        assert not [
            r
            for r in raised
            if r.kind == want.kind
            and (want.model is None or r.model == want.model)
            and (want.subject is None or r.subject == want.subject)
            and set(want.columns) <= set(r.columns)
        ], fault.name


def test_facts_explain_a_storm_day_and_a_feed_that_ended_and_not_a_calm_day(
    loaded_project: Settings,
) -> None:
    facts = Facts(loaded_project, FeatureLayer(loaded_project))
    daily = parse_window("daily")

    def day(n: int) -> tuple[datetime, datetime]:
        start = datetime(2013, 12, n, tzinfo=UTC)
        return start, start + timedelta(days=1)

    # December 5th, 2013: a storm day, later than every day of the four weeks before.
    storm = facts.extreme_labels("flight_delay", "all", *day(5), daily)
    assert storm is not None and "above every daily window's of the 28 days before" in storm
    assert facts.extreme_labels("flight_delay", "all", *day(27), daily) is None
    # nycflights13's weather ends on December 30th, 23:00: longer than any gap before.
    ended = facts.gap("weather_hourly", *day(31))
    assert ended is not None and "no rows from 2013-12-30 23:00 to the end of its data" in ended
    assert facts.gap("weather_hourly", *day(20)) is None
