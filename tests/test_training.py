"""Training runs on the real feature layer and registers into a real BentoML model store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from maquette import registry
from maquette.config import Settings
from maquette.errors import ConfigError, FeatureNotFound, InvalidModelSpec
from maquette.training import pipeline as training
from maquette.training.evaluate import evaluate
from maquette.training.model_types import LABEL, TrainedModel
from maquette.training.partitions import fit_partitions
from maquette.training.prepare import prepare
from maquette.training.search import run_trial, search_space
from maquette.version_record import Artifacts, VersionRecord

REGRESSION_METRICS = {"rows", "r2", "rmse", "mae", "rmsle", "rmsle_shift"}
BINARY_METRICS = {
    "rows",
    "auc",
    "log_loss",
    "brier",
    "threshold",
    "precision",
    "recall",
    "f1",
    "positive_rate",
    "confusion",
    "calibration",
}


def test_record_answers_every_question_of_the_model_repository(
    trained, loaded_project: Settings
) -> None:
    version = trained["flight_delay"]
    r = version.record
    assert r.trained_by.user and r.trained_by.host
    assert r.started_at < r.ended_at and r.seconds > 0
    assert "git_commit" in r.code_version.model_fields_set
    assert {"lightgbm", "feast", "bentoml"} <= set(r.libraries)
    assert r.spec.partition_by == "origin" and r.params["best_iteration"] >= 1
    assert len(r.search.trials) == 2 and r.search.metric == "rmse"
    service = {f"{x.view}:{x.name}" for x in r.features}
    assert "weather_hourly:temp" in service and "departure_calendar:dep_hour_local" in service
    for split in ("train", "validation", "test"):
        ref = r.data[split]
        assert hashlib.sha256(Path(ref.path).read_bytes()).hexdigest() == ref.sha256
        assert ref.rows > 1000 and ref.first_event and ref.first_event >= str(ref.window[0])
    assert set(r.distributions) == set(r.feature_names)
    assert r.distributions["temp"]["kind"] == "numeric" and "histogram" in r.distributions["temp"]
    assert r.distributions["plane_type"]["kind"] == "categorical"
    assert sum(r.importance.values()) == pytest.approx(1.0)
    assert len(r.partial_dependence) >= 1
    for split in (r.metrics.validation, r.metrics.test):
        assert set(split.model) == REGRESSION_METRICS
        assert set(split.baseline) == REGRESSION_METRICS
        assert set(split.partitions or {}) == {"EWR", "JFK", "LGA"}
    for name in ("report.html", "evidently.html", "record.json"):
        assert (version.path / name).stat().st_size > 1000
    assert r.artifacts is not None
    assert all((version.path / f).is_file() for f in r.artifacts.models.values())


def test_record_json_keeps_the_keys_and_values_it_was_written_with(trained) -> None:
    for version in trained.values():
        written = json.loads((version.path / "record.json").read_text())
        assert version.record.model_dump(mode="json") == written


def test_regression_beats_the_naive_baseline_and_says_by_how_much(trained) -> None:
    r = trained["flight_delay"].record
    assert r.metrics.test.model["rmse"] < r.metrics.test.baseline["rmse"]
    assert r.baseline.beats_baseline and "% lower" in r.baseline.gain


def test_binary_record_has_threshold_confusion_and_calibration(trained) -> None:
    r = trained["late_arrival"].record
    test = r.metrics.test.model
    assert set(test) == BINARY_METRICS
    assert r.threshold is not None and 0 < r.threshold < 1 and test["threshold"] == r.threshold
    assert sum(test["confusion"].values()) == test["rows"]
    assert sum(b["rows"] for b in test["calibration"]) == test["rows"]
    assert test["auc"] > r.metrics.test.baseline["auc"]


def test_partition_decisions_follow_the_validation_scores(trained) -> None:
    r = trained["flight_delay"].record
    for decision in r.partitions:
        assert decision.own is not None and decision.parent is not None
        assert decision.kept == (decision.own < decision.parent), decision
        served = (r.metrics.test.partitions or {})[decision.partition].served_by
        assert served == (decision.partition if decision.kept else "__parent__")


def test_a_partition_with_too_few_rows_falls_back_and_says_why(loaded_project: Settings) -> None:
    settings = loaded_project.model_copy(deep=True)
    settings.models["flight_delay"].min_partition_rows = 10**9
    data = prepare(settings, "flight_delay")
    best = run_trial(data, {"n_estimators": 20}, 0)
    model, decisions = fit_partitions(data, best)
    assert model.partitions == {}
    assert [d["kept"] for d in decisions] == [False, False, False]
    assert all("fewer than 1000000000 training rows" in d["reason"] for d in decisions)
    _, used = model.predict(data.frames["test"])
    assert set(used) == {"__parent__"}


def test_registered_model_reloads_and_predicts_what_was_evaluated(trained) -> None:
    version = trained["flight_delay"]
    model = TrainedModel.load(version.path, version.record)
    test = Path(version.record.data["test"].path)
    import pandas as pd

    frame = pd.read_parquet(test)
    pred, used = model.predict(frame)
    rmse = float(np.sqrt(np.mean((frame[LABEL].to_numpy() - pred) ** 2)))
    assert rmse == pytest.approx(version.record.metrics.test.model["rmse"])
    assert set(used) == set(version.record.metrics.test.routed_rows)


def test_bentoml_lists_every_version(trained) -> None:
    import bentoml

    tags = {str(m.tag) for m in bentoml.models.list()}
    assert {trained["flight_delay"].tag, trained["late_arrival"].tag} <= tags


def test_unknown_feature_service_in_a_spec_lists_the_known_ones(loaded_project: Settings) -> None:
    settings = loaded_project.model_copy(deep=True)
    settings.models["flight_delay"].feature_service = "nope"
    with pytest.raises(FeatureNotFound, match="unknown feature service 'nope'"):
        prepare(settings, "flight_delay")


def test_missing_label_column_lists_the_columns(loaded_project: Settings) -> None:
    settings = loaded_project.model_copy(deep=True)
    settings.models["flight_delay"].label = "arrival_delay_minutes"
    with pytest.raises(InvalidModelSpec, match="label 'arrival_delay_minutes'") as info:
        prepare(settings, "flight_delay")
    assert "arr_delay" in info.value.remedy


def test_empty_train_window_is_refused(loaded_project: Settings) -> None:
    settings = loaded_project.model_copy(deep=True)
    window = settings.models["flight_delay"].split.train
    window.start, window.end = window.start.replace(year=2010), window.end.replace(year=2010)
    with pytest.raises(
        InvalidModelSpec, match=r"train window 2010-01-01 \.\. 2010-10-01 holds no labelled rows"
    ):
        prepare(settings, "flight_delay")


@pytest.mark.parametrize("space", ["normal(0, 1)", "uniform(1)", "loguniform(0, 1)", "int(9, 3)"])
def test_a_search_space_that_does_not_parse_fails_before_any_work(
    loaded_project: Settings, space: str
) -> None:
    settings = loaded_project.model_copy(deep=True)
    settings.models["late_arrival"].search.space = {"learning_rate": space}
    before = registry.list_versions(settings, "late_arrival")
    with pytest.raises(InvalidModelSpec, match="search space for 'learning_rate'"):
        training.train(settings, "late_arrival")
    assert registry.list_versions(settings, "late_arrival") == before


def test_unknown_model_name_lists_the_declared_ones(loaded_project: Settings) -> None:
    with pytest.raises(ConfigError, match="no model named 'nope'") as info:
        training.train(loaded_project, "nope")
    assert "flight_delay" in info.value.remedy


def test_search_draws_are_reproducible_and_inside_the_space(loaded_project: Settings) -> None:
    spec = loaded_project.models["flight_delay"].model_copy(deep=True)
    spec.search.trials = 20
    draws = search_space(spec)
    assert draws == search_space(spec)
    assert all(0.03 <= d["learning_rate"] <= 0.2 and 15 <= d["num_leaves"] <= 127 for d in draws)


@pytest.mark.parametrize("algorithm", ["hist_gradient_boosting", "ridge"])
def test_scikit_learn_algorithms_train_and_reload(
    loaded_project: Settings, algorithm: str, tmp_path: Path
) -> None:
    settings = loaded_project.model_copy(deep=True)
    spec = settings.models["flight_delay"]
    spec.algorithm, spec.partition_by, spec.params = algorithm, None, {}
    spec.row_filter = "hash(flight_id) % 20 = 0"
    data = prepare(settings, "flight_delay")
    model, _ = fit_partitions(data, run_trial(data, {}, 0))
    evaluation = evaluate(data, model)
    assert evaluation["test"]["model"]["rmse"] > 0
    files = model.save(tmp_path)
    # Only what loading reads: a record without metrics or search, built without validation.
    record = VersionRecord.model_construct(
        name="flight_delay",
        task="regression",
        algorithm=algorithm,
        spec=spec,
        feature_names=data.features,
        categories=data.categories,
        artifacts=Artifacts(models=files),
    )
    again = TrainedModel.load(tmp_path, record)
    assert np.allclose(again.predict(data.frames["test"])[0], model.predict(data.frames["test"])[0])


def _tuned_settings(loaded_project: Settings) -> Settings:
    """flight_delay with the tuned search: eight trials, pruning on, no partitions."""
    settings = loaded_project.model_copy(deep=True)
    spec = settings.models["flight_delay"]
    spec.search.method, spec.search.trials, spec.partition_by = "optuna", 8, None
    # Rungs at 10, 30, 90, 270 rounds; slow learning rates, so trials reach them.
    spec.search.early_stopping_rounds = 10
    spec.search.space["learning_rate"] = "loguniform(0.01, 0.1)"
    spec.params = {"n_estimators": 300}
    return settings


@pytest.fixture(scope="module")
def tuned(loaded_project: Settings) -> registry.ModelVersion:
    return training.train(_tuned_settings(loaded_project), "flight_delay")


def test_the_tuned_search_prunes_trials_that_fall_behind_and_never_picks_one(
    tuned: registry.ModelVersion, loaded_project: Settings
) -> None:
    search = tuned.record.search
    assert search.method == "optuna" and len(search.trials) == 8
    pruned = [t for t in search.trials if t.pruned]
    done = [t for t in search.trials if not t.pruned]
    assert pruned and done, [(t.number, t.score, t.pruned) for t in search.trials]
    # A pruned trial stopped at a rung (a multiple of early stopping's rounds), short of the end.
    assert all(t.best_iteration is not None and t.best_iteration < 300 for t in pruned)
    assert search.best_trial in {t.number for t in done}
    assert min(t.score for t in done) == next(
        t.score for t in done if t.number == search.best_trial
    )
    # The model report shows the trials: scored, pruned apart, the best so far.
    page = tuned.report.read_text()
    assert "Search trials (optuna)" in page and "pruned (score where it stopped)" in page


def test_the_tuned_search_is_reproducible_for_a_seed(
    tuned: registry.ModelVersion, loaded_project: Settings
) -> None:
    from maquette.training.tuned_search import run_tuned_search

    settings = _tuned_settings(loaded_project)
    again = run_tuned_search(prepare(settings, "flight_delay"), lambda _: None)
    first = tuned.record.search.trials
    assert [(t.params, t.pruned) for t in again] == [(t.params, t.pruned) for t in first]
    assert [t.score for t in again] == pytest.approx([t.score for t in first], rel=1e-9)


def test_a_search_whose_every_trial_was_pruned_says_why(loaded_project: Settings) -> None:
    from maquette.training.model_types import Trial
    from maquette.training.search import best_trial

    spec = loaded_project.models["flight_delay"]
    pruned = [Trial(n, {}, float("nan"), 1, 0.1, None, True) for n in range(3)]
    with pytest.raises(InvalidModelSpec, match="every one of the 3 search trials was stopped"):
        best_trial(spec, pruned)
