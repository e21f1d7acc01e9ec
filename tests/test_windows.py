"""Window specs and live metrics per window, on small scored tables built by hand.

No trained model: a version record is built without validation (only what live metrics read:
task, label shift, threshold, feature names, training distributions). The label join runs on
the real prediction log (a real Redis Stream on database 1, drained to Parquet).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from maquette.config import Settings, alert_window, drift_window, load_settings, reference_kind
from maquette.data.sql import duckdb_connection
from maquette.errors import ConfigError
from maquette.monitoring import labels
from maquette.monitoring.live_metrics import (
    feature_missing,
    live_metrics,
    metrics_path,
    quality_scores,
)
from maquette.serving import prediction_log as predictions
from maquette.training.metrics import binary_metrics, regression_metrics
from maquette.version_record import VersionRecord
from maquette.window_spec import parse_duration, parse_window

H = timedelta(hours=1)
DAY1 = datetime(2024, 6, 3, tzinfo=UTC)  # a Monday
TIMESTAMPS = pa.timestamp("us", tz="UTC")
SPLIT = {
    part: {"start": "2024-01-01", "end": "2024-02-01"} for part in ("train", "validation", "test")
}


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# --- window specs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "every", "calendar", "count", "counts"),
    [
        ("hourly", "hourly", H, None, None, None),
        (" Daily ", "daily", 24 * H, None, None, None),
        ("weekly", "weekly", 7 * 24 * H, None, None, None),
        ("monthly", "monthly", None, "month", None, None),
        ("6h", "6h", 6 * H, None, None, None),
        ("1h", "hourly", H, None, None, None),
        ("48h", "2d", 48 * H, None, None, None),
        ("7d", "7d", 7 * 24 * H, None, None, None),
        ("1w", "weekly", 7 * 24 * H, None, None, None),
        ("2w", "2w", 14 * 24 * H, None, None, None),
        ("500 labelled", "500-labelled", None, None, 500, "labelled"),
        ("30 labeled", "30-labelled", None, None, 30, "labelled"),
        ("500-labelled", "500-labelled", None, None, 500, "labelled"),
        ("1000 rows", "1000-rows", None, None, 1000, "rows"),
    ],
)
def test_every_window_form_parses_to_its_canonical_name(
    text: str, name: str, every: Any, calendar: Any, count: Any, counts: Any
) -> None:
    spec = parse_window(text)
    assert (spec.text, spec.name, spec.every, spec.calendar, spec.count, spec.counts) == (
        text,
        name,
        every,
        calendar,
        count,
        counts,
    )
    assert parse_window(spec.name).name == name  # canonical names parse back to themselves


@pytest.mark.parametrize(
    "text", ["fortnightly", "0h", "-3d", "6 hours", "0 labelled", "12 labels", "", "3m", "1.5h"]
)
def test_bad_window_text_says_what_forms_exist(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_window(text)
    assert repr(text) in raised.value.message
    assert "e.g." in raised.value.remedy  # an example of what to write instead


def test_durations_parse_and_bad_ones_say_the_units() -> None:
    assert [parse_duration(t).total_seconds() for t in ("90s", "15m", "6h", "28d", "2w")] == [
        90,
        900,
        6 * 3600,
        28 * 86400,
        14 * 86400,
    ]
    for bad in ("4 weeks", "0d", "", "6"):
        with pytest.raises(ConfigError, match="unknown duration") as raised:
            parse_duration(bad)
        assert "s, m, h, d or w" in raised.value.remedy


# (spec, instant, expected start, expected end): a week boundary, month ends, a leap day.
BOUNDARIES = [
    ("hourly", utc(2024, 6, 3, 12, 34, 56), utc(2024, 6, 3, 12), utc(2024, 6, 3, 13)),
    ("daily", utc(2024, 2, 29, 23, 59, 59), utc(2024, 2, 29), utc(2024, 3, 1)),
    ("weekly", utc(2024, 6, 9, 23, 59), utc(2024, 6, 3), utc(2024, 6, 10)),  # Sunday night
    ("weekly", utc(2024, 6, 10), utc(2024, 6, 10), utc(2024, 6, 17)),  # Monday 00:00
    ("monthly", utc(2024, 2, 29, 23, 59), utc(2024, 2, 1), utc(2024, 3, 1)),
    ("monthly", utc(2023, 12, 31, 23), utc(2023, 12, 1), utc(2024, 1, 1)),
    ("6h", utc(2024, 3, 10, 5, 59), utc(2024, 3, 10), utc(2024, 3, 10, 6)),
    ("6h", utc(2024, 3, 10, 6), utc(2024, 3, 10, 6), utc(2024, 3, 10, 12)),
    ("6h", utc(2024, 3, 10, 23, 30), utc(2024, 3, 10, 18), utc(2024, 3, 11)),
    # 2w counts fortnights from Monday 2000-01-03: 2000-01-17 opens the second one.
    ("2w", utc(2000, 1, 16, 23), utc(2000, 1, 3), utc(2000, 1, 17)),
    ("2w", utc(2000, 1, 17, 1), utc(2000, 1, 17), utc(2000, 1, 31)),
    # 2024-01-01 is 8764 days (626 fortnights) after 2000-01-03.
    ("2w", utc(2024, 1, 10), utc(2024, 1, 1), utc(2024, 1, 15)),
]


@pytest.mark.parametrize(("text", "when", "start", "end"), BOUNDARIES)
def test_window_start_and_end_in_python_and_in_duckdb(
    text: str, when: datetime, start: datetime, end: datetime
) -> None:
    spec = parse_window(text)
    assert spec.start_of(when) == start
    assert spec.end_of(start) == end
    con = duckdb_connection()
    # The SQL must not depend on the session's time zone (a user's shell may set one).
    con.execute("SET TimeZone = 'America/New_York'")
    found = con.execute(
        f"SELECT {spec.start_sql('t')} FROM (SELECT $t::TIMESTAMPTZ AS t)", {"t": when}
    )
    assert found.fetchone()[0] == start  # type: ignore[index]


def test_count_windows_have_no_fixed_start() -> None:
    with pytest.raises(ConfigError, match="counts predictions"):
        parse_window("30 labelled").start_sql("request_time")


# --- settings -------------------------------------------------------------------------------


def test_window_settings_name_the_yaml_path_and_the_fix(tmp_path: Path) -> None:
    config = {"monitoring": {"windows": ["daily", "fortnightly"]}}
    (tmp_path / "maquette.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as raised:
        load_settings(tmp_path)
    assert "monitoring.windows.1" in raised.value.message
    assert "unknown window 'fortnightly'" in raised.value.message
    assert "500 labelled" in raised.value.message  # the forms that exist
    with pytest.raises(ValidationError, match=r"models\.m\.monitoring\.window"):
        _settings(tmp_path, window="3 days")
    with pytest.raises(ValidationError, match=r"monitoring\.reference_trailing"):
        Settings(monitoring={"reference_trailing": "4 weeks"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"models\.m\.monitoring\.open_after"):
        _settings(tmp_path, open_after=0)


def test_a_models_windows_and_reference_fall_back_to_the_project_defaults(tmp_path: Path) -> None:
    plain = _settings(tmp_path)
    assert alert_window(plain, "m").name == "daily"  # first of monitoring.windows
    assert drift_window(plain, "m").name == "weekly"  # monitoring.report_window
    assert reference_kind(plain, "m") == "trailing"
    own = _settings(
        tmp_path, window="30 labelled", drift_window="monthly", reference="season", open_after=2
    )
    resolved = own.monitoring_of("m")
    assert (resolved.alert_window.name, resolved.drift_window.name) == ("30-labelled", "monthly")
    assert (resolved.reference, resolved.open_after, resolved.resolve_after) == ("season", 2, 1)
    defaults = plain.models["m"].monitoring.thresholds
    assert (defaults.min_rows, defaults.worse_than_test, defaults.drift_share_above) == (
        30,
        0.5,
        0.5,
    )
    assert plain.monitoring.skew_sample == 200


# --- live metrics ---------------------------------------------------------------------------


def _settings(
    folder: Path,
    task: str = "regression",
    partition_by: str | None = None,
    thresholds: dict[str, Any] | None = None,
    **monitoring: Any,
) -> Settings:
    spec = {
        "task": task,
        "label": "y",
        "feature_service": "fs",
        "split": SPLIT,
        "partition_by": partition_by,
        "labels": {"join_keys": ["k"], "time_column": "t"},
        "monitoring": {"thresholds": thresholds or {}, **monitoring},
    }
    # Validated by Settings, so errors carry the YAML path (models.m....).
    return Settings(project_dir=folder, models={"m": spec})  # type: ignore[dict-item]


def _record(task: str = "regression", **extra: Any) -> dict[str, VersionRecord]:
    # Only what live metrics read: built without validation, like tests/test_training.py does.
    record = VersionRecord.model_construct(
        name="m",
        version="v1",
        task=task,
        label_shift=0.0,
        threshold=0.5 if task == "binary" else None,
        feature_names=extra.get("features", ["f1", "f2"]),
        distributions=extra.get("distributions", {}),
    )
    return {"v1": record}


def _scored(
    times: list[datetime],
    label: list[float | None],
    prediction: list[float] | None = None,
    partition: list[str] | None = None,
    missing: list[list[str]] | None = None,
    stale: list[list[str]] | None = None,
) -> pa.Table:
    n = len(times)
    return pa.table(
        {
            "request_time": pa.array(times, TIMESTAMPS),
            "version": ["v1"] * n,
            "partition": partition or ["__parent__"] * n,
            "prediction": prediction or [1.0] * n,
            "label": pa.array(label, pa.float64()),
            "missing": pa.array(missing or [[]] * n, pa.list_(pa.string())),
            "stale": pa.array(stale or [[]] * n, pa.list_(pa.string())),
        }
    )


def test_time_windows_group_rows_and_are_complete_only_once_ended(tmp_path: Path) -> None:
    settings = _settings(tmp_path, thresholds={"min_labelled": 2, "min_rows": 3})
    times = [DAY1 + 1 * H, DAY1 + 5 * H, DAY1 + 23 * H, DAY1 + 25 * H, DAY1 + 26 * H, DAY1 + 50 * H]
    scored = _scored(times, [1, 2, None, 4, None, 6], [2, 2, 2, 2, 2, 2])
    as_of = DAY1 + 36 * H  # noon of the second day: the third day's row is not yet requested
    series = live_metrics(settings, "m", scored, "daily", as_of=as_of, records=_record())
    assert list(series.window_start) == [DAY1, DAY1 + 24 * H]
    assert list(series.window_end) == [DAY1 + 24 * H, DAY1 + 48 * H]
    assert list(series.complete) == [True, False]  # the second day ends after as_of
    assert list(series.predictions) == [3, 2]
    assert list(series.labelled) == [2, 1]
    assert list(series.enough_labels) == [True, False]
    assert list(series.enough_rows) == [True, False]
    assert list(series.window) == ["daily", "daily"]
    assert metrics_path(settings, "m", "daily").is_file()
    # Without as_of every row counts and "now" is long after these days.
    later = live_metrics(settings, "m", scored, "6h", records=_record())
    assert later.complete.all() and later.predictions.sum() == 6
    assert list(later.window_start) == [DAY1, DAY1 + 18 * H, DAY1 + 24 * H, DAY1 + 48 * H]
    assert list(later.predictions) == [2, 1, 2, 1]


def test_count_windows_hold_n_labelled_rows_per_partition_in_request_time_order(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, partition_by="origin", thresholds={"min_labelled": 2})
    t = [DAY1 + i * H for i in range(10)]
    # Partition A: labels 1, -, 2, 3, -, 4, 5 at hours 0, 1, 3, 4, 6, 7, 9.
    # Partition B: labels 7, -, 8 at hours 2, 5, 8. Rows are given out of time order.
    rows = [
        (t[9], 5.0, "A"),
        (t[0], 1.0, "A"),
        (t[2], 7.0, "B"),
        (t[1], None, "A"),
        (t[3], 2.0, "A"),
        (t[5], None, "B"),
        (t[4], 3.0, "A"),
        (t[6], None, "A"),
        (t[8], 8.0, "B"),
        (t[7], 4.0, "A"),
    ]
    times, label, partition = (list(c) for c in zip(*rows, strict=True))
    scored = _scored(times, label, [0.0] * 10, partition)
    series = live_metrics(settings, "m", scored, "2 labelled", records=_record())
    a = series[series.partition == "A"]
    # Window 0: hours 0, 1, 3 (labelled 1 and 2; the unlabelled hour-1 row joins the filling
    # window); window 1: hours 4, 6, 7; window 2: hour 9, open with one label of two.
    assert list(a.window_start) == [t[0], t[4], t[9]]
    assert list(a.window_end) == [t[3], t[7], t[9]]
    assert list(a.predictions) == [3, 3, 1]
    assert list(a.labelled) == [2, 2, 1]
    assert list(a.complete) == [True, True, False]
    assert list(a.enough_labels) == [True, True, False]
    assert list(a.mae) == [pytest.approx(1.5), pytest.approx(3.5), pytest.approx(5.0)]
    b = series[series.partition == "B"]
    assert (list(b.window_start), list(b.window_end), list(b.predictions)) == ([t[2]], [t[8]], [3])
    # "all" counts every partition's labels in one request-time order: 1 7 | - 2 3 | - - 4 8 | 5
    every = series[series.partition == "all"]
    assert list(every.predictions) == [3, 2, 4, 1]
    assert list(every.window_start) == [t[0], t[3], t[5], t[9]]
    assert list(every.window) == ["2-labelled"] * 4
    # N rows: every 4 predictions of "all", whatever their labels.
    counted = live_metrics(settings, "m", scored, "4 rows", records=_record())
    every = counted[counted.partition == "all"]
    assert list(every.predictions) == [4, 4, 2]
    assert list(every.complete) == [True, True, False]
    assert list(every.window_end) == [t[3], t[7], t[9]]
    assert metrics_path(settings, "m", "4-rows").is_file()


def test_monthly_windows_end_at_the_next_month(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    times = [utc(2024, 1, 31, 23, 59), utc(2024, 2, 1), utc(2024, 2, 29, 23), utc(2024, 3, 1, 1)]
    scored = _scored(times, [1, 2, 3, 4])
    series = live_metrics(
        settings, "m", scored, "monthly", as_of=utc(2024, 3, 2), records=_record()
    )
    assert list(series.window_start) == [utc(2024, 1, 1), utc(2024, 2, 1), utc(2024, 3, 1)]
    assert list(series.window_end) == [utc(2024, 2, 1), utc(2024, 3, 1), utc(2024, 4, 1)]
    assert list(series.predictions) == [1, 2, 1]
    assert list(series.complete) == [True, True, False]


def test_regression_metrics_and_bias_equal_the_training_code(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    rng = np.random.default_rng(3)
    n = 200
    times = [DAY1 + timedelta(minutes=int(m)) for m in rng.integers(0, 24 * 60, n)]
    y = rng.normal(10, 5, n)
    p = y + rng.normal(1.5, 2, n)
    label: list[float | None] = [None if i % 7 == 0 else float(v) for i, v in enumerate(y)]
    series = live_metrics(settings, "m", _scored(times, label, list(p)), "daily", records=_record())
    (row,) = series.to_dict("records")
    known = np.array([v is not None for v in label])
    expected = regression_metrics(y[known], p[known], 0.0)
    for metric in ("r2", "rmse", "mae", "rmsle"):
        assert row[metric] == pytest.approx(expected[metric])
    assert row["bias"] == pytest.approx(float(np.mean(p[known] - y[known])))
    assert row["bias"] == pytest.approx(1.5, abs=0.5)  # the predictions run 1.5 too high
    scores = quality_scores(_record()["v1"], y[known], p[known])
    assert scores["bias"] == pytest.approx(row["bias"])
    assert (row["predictions"], row["labelled"]) == (n, int(known.sum()))


def test_binary_metrics_equal_the_training_code(tmp_path: Path) -> None:
    settings = _settings(tmp_path, task="binary")
    rng = np.random.default_rng(5)
    n = 300
    y = rng.integers(0, 2, n)
    # Rounded probabilities: ties, which the rank-based AUC must average like sklearn.
    p = np.clip(np.round(0.3 * y + rng.uniform(0, 0.7, n), 1), 0, 1)
    times = [DAY1 + timedelta(minutes=i) for i in range(n)]
    scored = _scored(times, [float(v) for v in y], list(p))
    (row,) = live_metrics(settings, "m", scored, "daily", records=_record("binary")).to_dict(
        "records"
    )
    expected = binary_metrics(y, p, 0.5)
    for metric in ("auc", "log_loss", "precision", "recall"):
        assert row[metric] == pytest.approx(expected[metric])
    assert "bias" not in row


def test_feature_missing_per_window_next_to_the_training_null_rate(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    records = _record(
        features=["f1", "f2", "f3"],
        distributions={"f1": {"rows": 200, "nulls": 10}, "f2": {"rows": 200, "nulls": 0}},
    )
    times = [DAY1 + i * H for i in range(4)] + [DAY1 + 30 * H]
    missing = [["f1"], ["f1"], [], ["f2"], ["f1"]]
    stale = [["f1"], [], ["f2"], [], []]  # the first row's f1 is both missing and stale: once
    scored = _scored(times, [1, 2, None, 4, 5], missing=missing, stale=stale)
    frame = feature_missing(settings, "m", scored, "daily", as_of=DAY1 + 36 * H, records=records)
    first = frame[frame.window_start == DAY1].set_index("feature")
    assert list(first.index) == ["f1", "f2", "f3"]
    assert list(first.missing) == [2, 2, 0]
    assert list(first.missing_rate) == [0.5, 0.5, 0.0]
    assert list(first.training_rate) == [0.05, 0.0, 0.0]  # f3 has no recorded distribution
    assert first.complete.all() and (first.predictions == 4).all()
    second = frame[frame.window_start == DAY1 + 24 * H].set_index("feature")
    assert list(second.missing) == [1, 0, 0] and not second.complete.any()
    assert set(frame.partition) == {"all"} and set(frame.window) == {"daily"}
    # Count windows cut the same rows as live metrics: "2 labelled" -> hours 0-1 | 2, 3, 30
    # (the unlabelled hour-2 row comes after the second label, so it opens the next window).
    counted = feature_missing(settings, "m", scored, "2 labelled", records=records)
    f1 = counted[counted.feature == "f1"]
    assert list(f1.predictions) == [2, 3] and list(f1.missing) == [2, 1]
    assert list(f1.complete) == [True, True]


def test_a_feature_served_as_null_counts_as_missing(tmp_path: Path) -> None:
    """A broken pipeline writes nulls that Redis returns as found: the served values say so."""
    settings = _settings(tmp_path)
    records = _record(features=["f1", "f2"], distributions={})
    times = [DAY1 + i * H for i in range(4)]
    scored = _scored(times, [1, 2, 3, 4], missing=[["f2"], [], [], []])
    served = ['{"f1": null, "f2": null}', '{"f1": 1.5, "f2": 2}', '{"f1": null, "f2": 3}', "{}"]
    scored = scored.append_column("features", pa.array(served, pa.string()))
    frame = feature_missing(settings, "m", scored, "daily", as_of=DAY1 + 30 * H, records=records)
    counts = frame.set_index("feature")["missing"].to_dict()
    # f1: null in rows 0 and 2, absent from row 3; f2: missing (and null) in row 0, absent in 3.
    assert counts == {"f1": 3, "f2": 2}
    # Without the served values only the missing and stale lists count.
    narrow = feature_missing(
        settings, "m", scored.drop_columns(["features"]), "daily", records=records
    )
    assert narrow.set_index("feature")["missing"].to_dict() == {"f1": 0, "f2": 1}


# --- the label join at a pass's as_of --------------------------------------------------------


def test_join_labels_leaves_out_predictions_requested_at_or_after_as_of(
    tmp_path: Path, running_redis: str
) -> None:
    settings = _settings(tmp_path).model_copy(deep=True)
    settings.redis.url = running_redis.rsplit("/", 1)[0] + "/1"
    settings.predictions.stream = f"test-windows:{uuid.uuid4().hex}"
    settings.predictions.folder = tmp_path / "predictions"
    requested = {"a": DAY1, "b": DAY1 + 2 * H, "c": DAY1 + 3 * H, "d": DAY1 + 5 * H}
    entries = [
        {
            "prediction_id": pid,
            "logged_at": when.isoformat(),
            "request_time": when.isoformat(),
            "model": "m",
            "version": "v1",
            "partition": "__parent__",
            "shadow": False,
            "prediction": 1.0,
            "decision": None,
            "latency_ms": 1.0,
            "entity": {"k": 1},
            "request": {},
            "features": {},
            "missing": [],
            "stale": [],
        }
        for pid, when in requested.items()
    ]
    predictions.PredictionLog(settings).append(entries)
    assert predictions.drain(settings).entries == 4
    file = tmp_path / "labels.parquet"
    known = [DAY1 + H, DAY1 + 4 * H, DAY1 + 4 * H, DAY1 + 6 * H]
    pq.write_table(
        pa.table(
            {
                "prediction_id": list(requested),
                "label": [1.0, 2.0, 3.0, 4.0],
                "label_available_at": pa.array(known, TIMESTAMPS),
            }
        ),
        file,
    )
    labels.ingest_labels(settings, "m", file)
    at = DAY1 + 3 * H  # c is requested exactly then: left out with d
    scored = labels.join_labels(settings, "m", at).to_pandas().set_index("prediction_id")
    assert sorted(scored.index) == ["a", "b"]
    assert scored.loc["a", "label"] == 1.0
    assert np.isnan(scored.loc["b", "label"])  # its label arrives at 04:00, after as_of
    everything = labels.join_labels(settings, "m").to_pandas()
    assert sorted(everything.prediction_id) == ["a", "b", "c", "d"]
