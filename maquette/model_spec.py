"""A model declared in `maquette.yaml`: task, label, features, time split, search, labels, alerts.

`config.Settings.models` holds one `ModelSpec` per model name; `config` builds its sections on
`Section` too. This module imports only `window_spec` (window fields), so it sits below `config`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from maquette.window_spec import WindowText

ReferenceKind = Literal["training", "trailing", "season"]


class Section(BaseModel):
    """A settings section: an unknown field is an error."""

    # A misspelt setting must fail loudly, not silently fall back to its default.
    model_config = ConfigDict(extra="forbid")


def as_utc(value: Any) -> Any:
    """A date, ISO string or naive datetime as an aware UTC datetime (plain dates: midnight)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


class TimeWindow(Section):
    """[start, end) in UTC; plain dates mean UTC midnight."""

    start: datetime = Field(description="First instant of the window (inclusive).")
    end: datetime = Field(description="End of the window (exclusive).")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        return as_utc(value)


class SplitSettings(Section):
    """Time-based split: the model never sees a later window while fitting an earlier one."""

    train: TimeWindow = Field(description="Rows the model is fitted on.")
    validation: TimeWindow = Field(
        description="Rows for early stopping, search and partition choice."
    )
    test: TimeWindow = Field(description="Rows for the final, untouched evaluation.")


class SearchSettings(Section):
    """Hyperparameter search: `trials` fits of parameter sets drawn from `space`."""

    method: Literal["random", "optuna"] = Field(
        "random",
        description="random: independent draws from the space; optuna: Optuna's TPE sampler "
        "learns from earlier trials and successive halving stops LightGBM trials that fall "
        "behind (same budget of trials).",
    )

    space: dict[str, str] = Field(
        default_factory=dict,
        description='Per parameter: "uniform(a, b)", "loguniform(a, b)", "int(a, b)" or "choice(x, y)".',
    )
    trials: int = Field(8, ge=1, description="How many parameter sets to try.")
    metric: str | None = Field(
        None, description="Validation metric to optimize (default rmse / auc)."
    )
    early_stopping_rounds: int = Field(30, ge=1, description="Boosting rounds without improvement.")
    seed: int = Field(7, description="Seed of the search and of the learners.")


class TrainingSettings(Section):
    """Where training's independent fits run: the random search's trials and the partition
    models (the same result either way, seed for seed)."""

    executor: Literal["local", "ray"] = Field(
        "local",
        description="local: one after the other in the training process; ray: as Ray tasks, "
        "side by side on a Ray cluster (the `ray` extra). search.method: optuna keeps its trials "
        "in order (each learns from the last), its partition fits still go to Ray.",
    )
    ray_address: str | None = Field(
        None,
        description="The Ray cluster: null starts one in the training process (ray_workers "
        "CPUs, stopped after); `auto` joins the one `ray start` runs on this machine; "
        "`ray://host:10001` a remote one (its workers need this project's Python packages).",
    )
    ray_workers: int | None = Field(
        None,
        ge=1,
        description="CPUs of the Ray started in the training process (null: every core); each "
        "fit takes one.",
    )


class LabelSpec(Section):
    """Where a model's labels come from once they are known, and how they meet predictions."""

    source: str | None = Field(
        None, description="Table with the labels (default: the model's entity source)."
    )
    join_keys: list[str] = Field(description="Columns that match the logged entity keys.")
    time_column: str = Field(
        description="Column of the label table holding the time a label belongs to; with "
        "time_from: row, also a field every request row must carry (its value is logged)."
    )
    time_from: Literal["row", "request"] = Field(
        "row",
        description="What a label's time_column is matched against: row (default) = the "
        "request row's own time_column field; request = the logged request time (the body's "
        "as_of, else when the request arrived), for rows without a time field. Both match "
        "exactly: send as_of, or key labels by prediction_id.",
    )
    available_at: str | None = Field(
        None, description="Column saying when each label became known."
    )


class AlertThresholds(Section):
    """When a judged window breaches (unset: not checked)."""

    rmse_above: float | None = Field(None, description="Regression: window RMSE above this.")
    mae_above: float | None = Field(None, description="Regression: window MAE above this.")
    r2_below: float | None = Field(None, description="Regression: window R² below this.")
    auc_below: float | None = Field(None, description="Binary: window AUC below this.")
    log_loss_above: float | None = Field(None, description="Binary: window log loss above this.")
    worse_than_test: float | None = Field(
        0.5,
        ge=0,
        description="Breach when the window's primary metric is worse than the version's test "
        "value on the same partition by more than this fraction (regression: RMSE ratio - 1; "
        "binary: log-loss ratio - 1).",
    )
    bias_above: float | None = Field(
        None, ge=0, description="Regression: |mean(prediction - label)| in a window above this."
    )
    drift_share_above: float | None = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of served features drifted from the reference in a drift window.",
    )
    missing_feature_rate_above: float | None = Field(
        None, description="Share of predictions served with a missing or stale feature."
    )
    missing_rate_increase_above: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Per feature: missing-or-stale share in the window minus the feature's null "
        "share in training.",
    )
    skew_rate_above: float | None = Field(
        0.01,
        ge=0,
        le=1,
        description="Per feature: share of sampled predictions whose served value differs from "
        "the offline recomputation.",
    )
    min_labelled: int = Field(
        30, ge=1, description="Accuracy alerts need at least this many labelled rows in a window."
    )
    min_rows: int = Field(
        30,
        ge=1,
        description="Predictions a window needs before drift, missing features or skew judge it.",
    )


class ModelMonitoring(Section):
    """What monitoring watches for one model, in which windows, and what an alert does."""

    thresholds: AlertThresholds = Field(default_factory=AlertThresholds)
    window: WindowText | None = Field(
        None,
        description="Alert window of accuracy, missing features and skew, e.g. daily, 6h, "
        "'30 labelled' (null: the first of monitoring.windows).",
    )
    drift_window: WindowText | None = Field(
        None, description="Window of drift reports (null: monitoring.report_window)."
    )
    reference: ReferenceKind | None = Field(
        None,
        description="Drift reference: training split, trailing served period, or the same "
        "period a season ago (null: monitoring.reference).",
    )
    open_after: int = Field(
        2,
        ge=1,
        description="Consecutive breaching judged windows that open an accuracy, drift or "
        "missing-features incident (one stormy day is not a broken model); skew and "
        "freshness open on their first breach.",
    )
    resolve_after: int = Field(
        1, ge=1, description="Consecutive clear judged windows that resolve an open incident."
    )
    retrain_on_alert: bool = Field(
        False, description="An accuracy or drift alert starts the training flow for a candidate."
    )
    promote_retrained: bool = Field(
        False, description="Promote that candidate to the default alias (never, unless set)."
    )


class ModelSpec(Section):
    """A model declared in the project file: what to predict, from which features, how."""

    task: Literal["regression", "binary"] = Field(description="What kind of prediction.")
    label: str = Field(description="Label column of the entity source, or a DuckDB expression.")
    feature_service: str = Field(description="Feast feature service giving the features.")
    entity_source: str | None = Field(
        None, description="Entity/label table (default: dataset.entity_source)."
    )
    timestamp_column: str = Field("event_timestamp", description="Event time of each entity row.")
    row_filter: str | None = Field(None, description="DuckDB condition selecting the rows to use.")
    split: SplitSettings
    algorithm: Literal["lightgbm", "hist_gradient_boosting", "ridge", "logistic_regression"] = (
        Field("lightgbm", description="Learner.")
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Fixed learner parameters.")
    search: SearchSettings = Field(default_factory=SearchSettings)
    partition_by: str | None = Field(
        None, description="Train one model per value of this column too."
    )
    min_partition_rows: int = Field(2000, ge=1, description="Fewer training rows: use the parent.")
    baseline_by: list[str] = Field(
        default_factory=list,
        description="Naive baseline: mean label per these columns (train window).",
    )
    threshold: float | None = Field(
        None, description="Binary decision threshold (default: best F1 on validation)."
    )
    labels: LabelSpec | None = Field(None, description="Late-arriving labels for monitoring.")
    monitoring: ModelMonitoring = Field(default_factory=ModelMonitoring)
