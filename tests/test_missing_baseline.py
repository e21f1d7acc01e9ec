"""Missing features judged against their usual share: the windows before, not one training rate.

The split windows come from a real trained version's split files; the verdicts from frames
shaped like `live_metrics.feature_missing`'s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from maquette import registry
from maquette.config import Settings, load_settings
from maquette.monitoring.missing_baseline import (
    HISTORY_COLUMNS,
    MIN_WINDOWS,
    split_history,
    split_windows,
)
from maquette.monitoring.verdicts import BREACH, CLEAR, missing_verdicts
from maquette.window_spec import parse_window
from tests.conftest import make_project

DAY0 = datetime(2013, 12, 2, tzinfo=UTC)


@pytest.fixture()
def settings(tmp_path: Path, running_redis: str) -> Settings:
    return load_settings(make_project(tmp_path / "project", running_redis))


def _windows(rates: dict[str, list[float]], training: dict[str, float]) -> pd.DataFrame:
    """Served daily windows from DAY0: one row per (day, feature), 200 predictions each."""
    rows = []
    for feature, by_day in rates.items():
        for n, rate in enumerate(by_day):
            start = pd.Timestamp(DAY0 + timedelta(days=n))
            rows.append(
                {
                    "model": "flight_delay",
                    "version": "v1",
                    "partition": "all",
                    "window": "daily",
                    "window_start": start,
                    "window_end": start + pd.Timedelta(days=1),
                    "complete": True,
                    "predictions": 200,
                    "feature": feature,
                    "missing": int(rate * 200),
                    "missing_rate": rate,
                    "training_rate": training[feature],
                }
            )
    return pd.DataFrame(rows)


def _history(rates: dict[str, list[float]]) -> pd.DataFrame:
    """Split windows of the days before DAY0, the last listed day right before it."""
    rows = []
    for feature, by_day in rates.items():
        for back, rate in enumerate(reversed(by_day), start=1):
            start = pd.Timestamp(DAY0 - timedelta(days=back))
            end = start + pd.Timedelta(days=1)
            rows.append(("v1", start, end, feature, 240, rate))
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def test_a_sensor_out_for_whole_days_is_usual_and_a_broken_pipeline_stays_breaching(
    settings: Settings,
) -> None:
    # Four weeks before serving: pressure absent 0% or 60% of a day (10% overall in training),
    # the carrier's stats never.
    before = {"pressure": [0.0, 0.6, 0.0, 0.0] * 7, "carrier_dep_delay_7d": [0.0] * 28}
    served = _windows(
        {"pressure": [0.5, 0.0, 0.55, 0.0], "carrier_dep_delay_7d": [0.0, 0.12, 0.12, 0.0]},
        {"pressure": 0.1, "carrier_dep_delay_7d": 0.0},
    )
    verdicts = missing_verdicts(settings, "flight_delay", served, _history(before))
    assert [v.status for v in verdicts] == [CLEAR, BREACH, BREACH, CLEAR]
    for v in verdicts[1:3]:
        assert v.finding is not None and v.finding.columns == ["carrier_dep_delay_7d"]
    # The second day of the fault is judged against the same usual share as the first (one
    # split day fewer in the period, the faulty first day not added): a breaching window never
    # becomes the usual.
    assert verdicts[1].finding and verdicts[2].finding
    usual = "carrier_dep_delay_7d 12.0% (usually 0.0%, at most 0.0% in 28 windows)"
    assert usual in verdicts[1].finding.message
    assert "usually 0.0%, at most 0.0% in 27 windows" in verdicts[2].finding.message
    # Without the weeks before, the first day is judged against training's 10%: +40% breaches.
    (alone,) = missing_verdicts(settings, "flight_delay", served[served.window_start == DAY0])
    assert alone.status == BREACH and alone.finding is not None
    assert alone.finding.columns == ["pressure"]
    assert "pressure 50.0% (training 10.0%)" in alone.finding.message


def test_the_usual_share_needs_enough_recent_windows(settings: Settings) -> None:
    # Windows older than reference_trailing (28 days) are not the usual; with fewer than
    # MIN_WINDOWS recent ones the training share is.
    old = _history({"temp": [0.5] * 10 + [0.0] * (MIN_WINDOWS - 1)})
    old = old[old.window_end > pd.Timestamp(DAY0) - pd.Timedelta(days=MIN_WINDOWS - 1)]
    served = _windows({"temp": [0.3]}, {"temp": 0.0})
    (few,) = missing_verdicts(settings, "flight_delay", served, old)
    assert few.status == BREACH and few.finding and "(training 0.0%)" in few.finding.message
    spread = _history({"temp": [0.35] + [0.0] * 29})  # 35% 30 days ago: out of the period
    (far,) = missing_verdicts(settings, "flight_delay", served, spread)
    assert far.status == BREACH and far.finding
    assert "usually 0.0%, at most 0.0% in 28 windows" in far.finding.message
    near = _history({"temp": [0.0] * 20 + [0.35] + [0.0] * 7})
    (usual,) = missing_verdicts(settings, "flight_delay", served, near)
    assert usual.status == CLEAR  # 30% is below a day of 35% in the four weeks before


def test_split_windows_are_the_null_shares_of_the_versions_split_rows(
    production: dict[str, str], loaded_project: Settings
) -> None:
    version = registry.resolve(loaded_project, production["flight_delay"])
    record = version.record
    found = split_windows(
        loaded_project, "flight_delay", version.version, record, parse_window("daily"), DAY0
    )
    assert not found.empty and list(found.columns) == HISTORY_COLUMNS
    assert found.window_start.min() >= pd.Timestamp(DAY0 - timedelta(days=28))
    assert found.window_end.max() <= pd.Timestamp(DAY0)
    min_rows = loaded_project.monitoring_of("flight_delay").thresholds.min_rows
    assert (found.rows >= min_rows).all()
    ts = loaded_project.model_spec("flight_delay").timestamp_column
    files = [str(d.path) for d in record.data.values() if d is not None]
    feature = "wind_gust"
    direct = (
        duckdb.connect()
        .sql(
            f"SELECT date_trunc('day', {ts} AT TIME ZONE 'UTC') AS d, "
            f"avg(({feature} IS NULL)::DOUBLE) AS r, count(*) AS n "
            f"FROM read_parquet({files}, union_by_name = true) GROUP BY 1"
        )
        .df()
    )
    direct["d"] = pd.to_datetime(direct["d"]).dt.tz_localize("UTC")
    mine = found[found.feature == feature].merge(direct, left_on="window_start", right_on="d")
    assert len(mine) == len(found[found.feature == feature])
    assert (mine.rows == mine.n).all()
    assert mine.missing_rate.to_numpy() == pytest.approx(mine.r.to_numpy())
    # The history of a scored frame: each version's split windows before its first window.
    frame = pd.DataFrame({"version": [version.version], "window_start": [pd.Timestamp(DAY0)]})
    assert split_history(loaded_project, "flight_delay", frame).equals(found)
