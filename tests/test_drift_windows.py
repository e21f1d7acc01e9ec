"""Drift per window, the tests chosen by size, references, and skew per alert window.

Real Evidently, real Feast (the offline store recomputes the features), real trained versions.
The served traffic is December 2013 as a consistent server would have logged it: each row's
features are the offline point-in-time values as of its departure (so no skew), predicted by
the production version, labelled with its arrival delay.
"""

from __future__ import annotations

import html
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from maquette import registry
from maquette.config import Settings
from maquette.features.layer import FeatureLayer
from maquette.monitoring import drift, skew
from maquette.monitoring.drift_tests import benjamini_hochberg, plan_tests
from maquette.monitoring.reference import reference_frame
from maquette.monitoring.verdicts import NOT_ENOUGH, drift_verdicts
from maquette.platform.demo import entity_frame
from maquette.training.model_types import TrainedModel

NAME = "flight_delay"
SATURDAY = datetime(2013, 12, 7, tzinfo=UTC)
KEYS = ["origin", "carrier", "tailnum", "route", "scheduled_departure"]
# Served traffic: a large week, a small week, and a few rows of the week after.
WEEKS = [
    (datetime(2013, 12, 2, tzinfo=UTC), 700),
    (datetime(2013, 12, 9, tzinfo=UTC), 150),
    (datetime(2013, 12, 16, tzinfo=UTC), 12),
]


def scored_table(
    settings: Settings, version: registry.ModelVersion, entities: pd.DataFrame
) -> pa.Table:
    """The scored-predictions table of `entities` served by `version` at their departures."""
    record = version.record
    layer = FeatureLayer(settings)
    plan = layer.read_plan(record.feature_service)
    request_fields = list(plan.request_fields)
    keys = [
        k
        for k in plan.request_keys(settings.model_spec(version.name).partition_by)
        if k not in request_fields
    ]
    entities = entities.reset_index(drop=True)
    frame = layer.training_frame(entities, record.feature_service, "scheduled_departure")
    features = frame.to_pandas().reset_index(drop=True)
    model = TrainedModel.load(version.path, record)
    prediction, used = model.predict(features)

    def plain(value: object) -> object:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, pd.Timestamp):
            return value.isoformat()
        return value.item() if hasattr(value, "item") else value

    names = list(record.feature_names)
    rows = {
        "prediction_id": [uuid.uuid4().hex for _ in range(len(entities))],
        "request_time": entities["scheduled_departure"].tolist(),
        "model": [version.name] * len(entities),
        "version": [version.version] * len(entities),
        "partition": list(used),
        "prediction": prediction.tolist(),
        "entity": [json.dumps({k: plain(r[k]) for k in keys}) for _, r in entities.iterrows()],
        "request": [
            json.dumps({k: plain(r[k]) for k in request_fields}) for _, r in entities.iterrows()
        ],
        "features": [
            json.dumps({f: plain(r[f]) for f in names}) for _, r in features[names].iterrows()
        ],
        "missing": [[] for _ in range(len(entities))],
        "stale": [[] for _ in range(len(entities))],
        "label": entities["arr_delay"].astype(float).tolist(),
    }
    return pa.table(rows).cast(
        pa.schema(
            [
                ("prediction_id", pa.string()),
                ("request_time", pa.timestamp("us", tz="UTC")),
                ("model", pa.string()),
                ("version", pa.string()),
                ("partition", pa.string()),
                ("prediction", pa.float64()),
                ("entity", pa.string()),
                ("request", pa.string()),
                ("features", pa.string()),
                ("missing", pa.list_(pa.string())),
                ("stale", pa.list_(pa.string())),
                ("label", pa.float64()),
            ]
        )
    )


@pytest.fixture(scope="module")
def served(production: dict[str, str], loaded_project: Settings) -> tuple[Settings, pa.Table]:
    """Three weeks of December served by flight_delay's production version (700, 150, 12 rows)."""
    settings = loaded_project.model_copy(deep=True)
    flights = entity_frame(settings).to_pandas().dropna(subset=[*KEYS, "arr_delay"])
    picked = []
    for i, (start, n) in enumerate(WEEKS):
        week = flights[
            (flights.scheduled_departure >= start)
            & (flights.scheduled_departure < start + timedelta(days=7))
        ]
        picked.append(week.sample(n, random_state=i))
    entities = pd.concat(picked).sort_values("scheduled_departure")
    version = registry.resolve(settings, production[NAME])
    return settings, scored_table(settings, version, entities)


def _own(settings: Settings, folder: Path, **monitoring: object) -> Settings:
    """The settings with reports, workspace and offline monitoring files of their own."""
    copy = settings.model_copy(deep=True)
    copy.paths.reports = folder / "reports"
    copy.monitoring.workspace = folder / "evidently"
    for key, value in monitoring.items():
        setattr(copy.monitoring, key, value)
    return copy


# --------------------------------------------------------------------------- tests by size


def _normal_columns(seed: int, shift: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """25 unchanged independent columns and one truly shifted, 300 window rows vs 2,000."""
    rng = np.random.default_rng(seed)
    columns = [f"x{i:02d}" for i in range(25)]
    reference = pd.DataFrame(rng.normal(size=(2000, 25)), columns=columns)
    current = pd.DataFrame(rng.normal(size=(300, 25)), columns=columns)
    reference["shifted"] = rng.normal(size=2000)
    current["shifted"] = rng.normal(shift, 1, size=300)
    return current, reference, [*columns, "shifted"]


def test_benjamini_hochberg_keeps_unchanged_columns_quiet_and_finds_the_shifted_one() -> None:
    uncorrected_alarms = corrected_alarms = 0
    for seed in range(20):
        current, reference, columns = _normal_columns(seed)
        tests = plan_tests(current, reference, columns, [], 300, 1000, 0.05, 0.1)
        assert tests.corrected and set(tests.methods.values()) == {"ks"}
        false_raw = [c for c, p in tests.p_values.items() if p <= 0.05 and c != "shifted"]
        drifted = tests.drifted(tests.p_values, 0.05)
        assert "shifted" in drifted, (seed, tests.p_values["shifted"])
        uncorrected_alarms += bool(false_raw)
        corrected_alarms += bool(set(drifted) - {"shifted"})
    # 25 tests at 5%: most windows have a false "drifted" column; corrected, few do.
    assert uncorrected_alarms >= 10, uncorrected_alarms
    assert corrected_alarms <= 3, corrected_alarms


def test_evidentlys_own_verdicts_with_the_bh_threshold_are_the_corrected_ones() -> None:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    current, reference, columns = _normal_columns(1)
    tests = plan_tests(current, reference, columns, [], 300, 1000, 0.05, 0.1)
    raw = [c for c, p in tests.p_values.items() if p <= 0.05]
    drifted = tests.drifted(tests.p_values, 0.05)
    assert len(raw) > len(drifted) == 1  # this seed has uncorrected false positives
    definition = DataDefinition(numerical_columns=columns)
    snapshot = Report(
        [
            DataDriftPreset(
                columns=columns,
                per_column_method=tests.methods,
                per_column_threshold=tests.thresholds,
            )
        ]
    ).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    (count,) = [
        m["value"]
        for m in snapshot.dict()["metrics"]
        if m["config"]["type"].endswith("DriftedColumnsCount")
    ]
    assert count["count"] == len(drifted)


def test_bh_adjusted_p_values_follow_the_step_up_rule() -> None:
    adjusted, threshold = benjamini_hochberg({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5}, 0.05)
    # m/rank * p: a 0.04, c 0.06, b 0.0533, d 0.5 -> running minimum from the top.
    assert adjusted == pytest.approx({"a": 0.04, "c": 0.05333333, "b": 0.05333333, "d": 0.5})
    assert threshold == pytest.approx(0.0125)  # k = 1: only a is rejected
    assert benjamini_hochberg({}, 0.05) == ({}, 0.05)


def test_a_large_window_gets_distances_and_no_correction() -> None:
    current, reference, columns = _normal_columns(3)
    tests = plan_tests(current, reference, columns, ["kind"], 1500, 1000, 0.05, 0.1)
    assert set(tests.methods.values()) == {"wasserstein", "jensenshannon"}
    assert tests.methods["kind"] == "jensenshannon" and not tests.corrected
    assert set(tests.thresholds.values()) == {0.1} and "distances" in tests.why


# --------------------------------------------------------------------------- windows


def test_drift_windows_choose_tests_by_size_and_skip_windows_below_min_rows(
    served: tuple[Settings, pa.Table], tmp_path: Path
) -> None:
    settings, scored = served
    own = _own(settings, tmp_path, drift_large_sample=500, reference="training")
    said: list[str] = []
    reports = drift.window_reports(own, NAME, scored, said.append)
    assert [(r.window, r.window_start[:10], r.rows) for r in reports] == [
        ("weekly", "2013-12-02", 700),
        ("weekly", "2013-12-09", 150),
        ("weekly", "2013-12-16", 12),
    ]
    large, small, tiny = reports
    assert set(large.drift_method.values()) <= {"wasserstein", "jensenshannon"}
    assert not large.corrected and not large.adjusted_p
    assert set(small.drift_method.values()) <= {"ks", "chisquare"} and small.corrected
    assert set(small.adjusted_p) == set(small.feature_drift)
    assert "Benjamini-Hochberg" in small.note and "K-S" in small.tests["temp"]
    # Maquette's share: the corrected verdicts over the compared features.
    for r in (large, small):
        assert r.drift_share == pytest.approx(len(r.drifted_features) / len(r.drift_method))
        assert Path(r.html).is_file() and r.reference == "training" and r.enough
        assert "training split" in r.reference_note
    small_drifted = {c for c, p in small.adjusted_p.items() if p <= own.monitoring.drift_fdr}
    assert set(small.drifted_features) == small_drifted
    # 12 predictions, min_rows 30: not enough data, never tested, said in a page of its own.
    assert not tiny.enough and tiny.drifted_features == [] and not tiny.workspace_runs
    assert "not enough data" in tiny.note and "not enough data" in Path(tiny.html).read_text()
    assert len(said) == 2
    # Unchanged rows: kept, not recomputed.
    again = drift.window_reports(own, NAME, scored, said.append)
    assert len(said) == 2 and [r.html for r in again] == [r.html for r in reports]


def test_an_open_window_is_marked_and_rows_after_as_of_do_not_count(
    served: tuple[Settings, pa.Table], tmp_path: Path
) -> None:
    settings, scored = served
    own = _own(settings, tmp_path, reference="training")
    as_of = datetime(2013, 12, 12, tzinfo=UTC)
    reports = drift.window_reports(own, NAME, scored, as_of=as_of)
    assert [(r.window_start[:10], r.complete) for r in reports] == [
        ("2013-12-02", True),
        ("2013-12-09", False),
    ]
    times = scored.to_pandas().request_time
    assert reports[1].rows == int(((times >= "2013-12-09") & (times < as_of)).sum())


def test_a_window_mostly_before_serving_began_is_not_judged(
    served: tuple[Settings, pa.Table], tmp_path: Path
) -> None:
    settings, scored = served
    own = _own(settings, tmp_path, reference="training")
    # Serving begins on Saturday 2013-12-07: two days of the first ISO week are no week.
    late = scored.filter(pc.greater_equal(scored["request_time"], pa.scalar(SATURDAY)))
    first, second, _ = drift.window_reports(own, NAME, late)
    assert first.window_start[:10] == "2013-12-02" and first.complete and first.rows >= 30
    assert not first.enough and not first.drifted_features and not first.workspace_runs
    assert "began serving on 2013-12-07" in first.note and "not tested" in first.note
    assert second.window_start[:10] == "2013-12-09" and second.enough
    (verdict, *_) = drift_verdicts(own, NAME, [first, second])
    assert verdict.status == NOT_ENOUGH


def test_a_count_window_holds_n_rows_and_only_full_ones_are_complete(
    served: tuple[Settings, pa.Table],
) -> None:
    _, scored = served
    frame = scored.to_pandas()
    from maquette.window_spec import parse_window

    windows = drift.windows_of(frame, parse_window("300 rows"), datetime(2014, 1, 1, tzinfo=UTC))
    assert [len(w.rows) for w in windows] == [300, 300, 262]
    assert [w.complete for w in windows] == [True, True, False]
    assert windows[0].end <= windows[1].start


# --------------------------------------------------------------------------- references


def test_trailing_reference_is_served_rows_plus_the_splits_before_them(
    served: tuple[Settings, pa.Table],
) -> None:
    settings, scored = served
    frame = scored.to_pandas()
    own = settings.model_copy(deep=True)
    own.monitoring.reference_rows = 100_000  # no sampling: count the rows
    version = registry.resolve(settings, f"{NAME}:{frame.version.iloc[0]}")
    start, end = datetime(2013, 12, 9, tzinfo=UTC), datetime(2013, 12, 16, tzinfo=UTC)
    rows, kind, note = reference_frame(own, version, "trailing", start, end, frame)
    assert kind == "trailing"
    served_before = int(((frame.request_time >= "2013-11-11") & (frame.request_time < start)).sum())
    first_served = frame.request_time.min()
    test_split = pd.read_parquet(version.record.data["test"].path)
    ts = test_split.event_timestamp
    split_rows = int(((ts >= pd.Timestamp("2013-11-11", tz="UTC")) & (ts < first_served)).sum())
    assert served_before == 700 and split_rows > 1000
    assert len(rows) == served_before + split_rows
    assert f"{served_before:,} served rows" in note and f"{split_rows:,} test split rows" in note
    assert "2013-11-11" in note
    assert rows["prediction"].notna().all() and set(version.record.feature_names) <= set(rows)


def test_season_reference_is_the_same_period_a_year_back(
    served: tuple[Settings, pa.Table],
) -> None:
    settings, scored = served
    frame = scored.to_pandas()
    version = registry.resolve(settings, f"{NAME}:{frame.version.iloc[0]}")
    # A window 364 days after the first served week: its season is that week's served rows.
    start = datetime(2013, 12, 2, tzinfo=UTC) + timedelta(days=364)
    rows, kind, note = reference_frame(
        settings, version, "season", start, start + timedelta(days=7), frame
    )
    assert (kind, len(rows)) == ("season", 700)
    assert "2013-12-02" in note and "700 served rows" in note
    # Its season in training data (91 days back: September): the train split's rows.
    own = settings.model_copy(deep=True)
    own.monitoring.reference_season = "91d"
    start = datetime(2013, 12, 9, tzinfo=UTC)
    rows, kind, note = reference_frame(
        own, version, "season", start, start + timedelta(days=7), frame
    )
    train = pd.read_parquet(version.record.data["train"].path).event_timestamp
    lo, hi = start - timedelta(days=91), start + timedelta(days=7 - 91)
    expected = int(((train >= lo) & (train < hi)).sum())
    assert kind == "season" and "train split rows" in note
    assert len(rows) == min(expected, own.monitoring.reference_rows)


def test_a_reference_with_too_few_rows_falls_back_to_training_and_says_so(
    served: tuple[Settings, pa.Table], tmp_path: Path
) -> None:
    settings, scored = served
    # December 2012 holds no flights: the season reference is empty.
    own = _own(settings, tmp_path, reference="season", drift_large_sample=500)
    reports = drift.window_reports(own, NAME, scored)
    judged = [r for r in reports if r.enough]
    assert judged and all(r.reference == "training" for r in judged)
    for r in judged:
        assert r.reference_note.startswith("fallback: training split")
        assert "only 0 rows in the season period 2012-12-" in r.reference_note
        assert r.reference_note in r.note


def test_the_trailing_reference_is_used_and_noted_in_the_report(
    served: tuple[Settings, pa.Table], tmp_path: Path
) -> None:
    settings, scored = served
    own = _own(settings, tmp_path, reference="trailing", drift_large_sample=500)
    large, small, _ = drift.window_reports(own, NAME, scored)
    assert large.reference == small.reference == "trailing"
    assert "test split rows" in large.reference_note and "served rows" not in large.reference_note
    assert "700 served rows" in small.reference_note
    # The page says it too (and the snapshot's metadata in the Evidently workspace).
    page = Path(small.html).read_text()
    assert html.escape(small.reference_note) in page and "Benjamini-Hochberg" in page


# --------------------------------------------------------------------------- skew


def _scaled(scored: pa.Table, feature: str, since: datetime, factor: float) -> pa.Table:
    """The scored table with `feature` served `factor` times larger from `since` on."""
    frame = scored.to_pandas()
    changed = []
    for when, text in zip(frame.request_time, frame.features, strict=True):
        values = json.loads(text)
        if when >= since and values.get(feature) is not None:
            values[feature] = values[feature] * factor
        changed.append(json.dumps(values))
    return scored.set_column(
        scored.schema.get_field_index("features"), "features", pa.array(changed)
    )


def test_skew_windows_find_a_feature_served_in_other_units_and_stay_zero_otherwise(
    served: tuple[Settings, pa.Table], tmp_path: Path
) -> None:
    settings, scored = served
    own = settings.model_copy(deep=True)
    own.paths.offline_store = tmp_path / "offline"  # the skew cache of this test only
    own.monitoring.skew_sample = 60
    layer = FeatureLayer(settings)
    clean = skew.skew_windows(own, NAME, scored, "weekly", layer=layer)
    assert [(w.window_start[:10], w.rows, w.enough) for w in clean] == [
        ("2013-12-02", 60, True),
        ("2013-12-09", 60, True),
        ("2013-12-16", 12, False),
    ]
    for w in clean[:2]:
        assert w.worst == 0.0, w.examples
    # pressure in hundredths of an inch of mercury instead of millibars, from Dec 9 on.
    since = datetime(2013, 12, 9, tzinfo=UTC)
    faulty = _scaled(scored, "pressure", since, 2.953)
    shutil_cache = skew.skew_path(own, NAME, "weekly")
    shutil_cache.unlink()
    found = skew.skew_windows(own, NAME, faulty, "weekly", layer=layer)
    before, after = found[0], found[1]
    assert before.worst == 0.0
    # Every sampled prediction whose pressure was known (some stations report none).
    assert after.mismatch_rate["pressure"] > 0.5, after.mismatch_rate["pressure"]
    assert {f for f, rate in after.mismatch_rate.items() if rate > 0} == {"pressure"}
    example = after.examples["pressure"][0]
    assert example["served"] == pytest.approx(example["offline"] * 2.953)


def test_complete_skew_windows_are_reused_and_the_open_one_recomputed(
    served: tuple[Settings, pa.Table], tmp_path: Path
) -> None:
    settings, scored = served
    own = settings.model_copy(deep=True)
    own.paths.offline_store = tmp_path / "offline"
    own.monitoring.skew_sample = 40
    layer = FeatureLayer(settings)
    as_of = datetime(2013, 12, 12, tzinfo=UTC)
    first = skew.skew_windows(own, NAME, scored, "weekly", as_of=as_of, layer=layer)
    assert [w.complete for w in first] == [True, False]
    # Served rows never change once logged: the complete window is taken from the cache (the
    # scaled values are not looked at), the open one is sampled and compared again.
    faulty = _scaled(scored, "pressure", datetime(2013, 12, 1, tzinfo=UTC), 2.953)
    second = skew.skew_windows(own, NAME, faulty, "weekly", as_of=as_of, layer=layer)
    assert second[0] == first[0]
    assert second[1].mismatch_rate["pressure"] > 0.5
