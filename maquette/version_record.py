"""The record of a model version, typed: what `record.json` in its model store folder holds.

`training.records.build_record` fills it, `registry.register` writes it as `record.json` and
`registry.ModelVersion.record` reads it back. Nested models type the parts whose shape is fixed
(who trained it, the search and its trials, the training sets, partition decisions, metrics
per split); open parts (metric values, distributions, learner parameters) stay dicts. This
module imports only pydantic and `model_spec`, so the registry and every layer above can use it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from maquette.model_spec import ModelSpec


class RecordPart(BaseModel):
    """A part of the record: unknown keys are kept, and a key absent when read stays absent."""

    # Records written by older versions of Maquette must still load and dump unchanged, so
    # keys this model does not know are kept, and NaN metrics are written as `json` writes them.
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")

    @model_serializer(mode="wrap")
    def _present_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An optional key (a partition's scores, the test split's partitions) that the record
        # did not have is not written as null: record.json keeps the keys it was given.
        dumped: dict[str, Any] = handler(self)
        keep = self.model_fields_set | set(self.model_extra or {})
        return {k: v for k, v in dumped.items() if k in keep}


class TrainedBy(RecordPart):
    """Who trained the version, and where."""

    user: str
    host: str


class Executor(RecordPart):
    """Where the search's trials and the partition fits ran (`training.executor`)."""

    type: str = "local"  # local, or ray
    address: str | None = None  # the Ray cluster
    workers: int | None = None  # its CPUs when the run began


class CodeVersion(RecordPart):
    """The project's git commit when trained (None outside a git repository)."""

    git_commit: str | None = None
    dirty: bool | None = None


class SearchTrial(RecordPart):
    """One hyperparameter trial: its parameters and validation score."""

    number: int
    params: dict[str, Any]
    score: float
    best_iteration: int | None = None
    seconds: float
    pruned: bool = False  # stopped early (tuned search): its score is where it stopped


class Search(RecordPart):
    """The hyperparameter search: the metric, the winning trial and every trial."""

    metric: str
    method: str = "random"  # random, or optuna (the tuned search)
    best_trial: int
    trials: list[SearchTrial]


class FeatureRef(RecordPart):
    """A feature the model uses and the Feast view it comes from."""

    name: str
    view: str | None = None


class TrainingSet(RecordPart):
    """The data of one split: file, content hash, rows and time range."""

    path: str
    sha256: str
    rows: int
    window: list[str | None]
    first_event: str | None = None
    last_event: str | None = None


class PartialDependence(RecordPart):
    """The average prediction along a grid of one feature's values."""

    grid: list[float]
    average_prediction: list[float]


class PartitionDecision(RecordPart):
    """Whether one partition value got its own model, with both validation scores and why."""

    partition: str
    train_rows: int
    validation_rows: int
    metric: str
    kept: bool
    own: float | None = None
    parent: float | None = None
    reason: str


class PartitionMetrics(RecordPart):
    """The metrics on one partition's rows, and which model served them."""

    model: dict[str, Any]
    baseline: dict[str, Any]
    served_by: str


class SplitMetrics(RecordPart):
    """The metrics on one split: the model, the naive baseline, per partition, rows per model."""

    model: dict[str, Any]
    baseline: dict[str, Any]
    partitions: dict[str, PartitionMetrics] | None = None
    routed_rows: dict[str, int]


class Metrics(RecordPart):
    """The metrics on validation and on test."""

    validation: SplitMetrics
    test: SplitMetrics


class BaselineSummary(RecordPart):
    """The naive baseline in words, and the model's gain over it on test."""

    description: str
    gain: str
    beats_baseline: bool


class Artifacts(RecordPart):
    """The files of the version folder: {partition or "__parent__": model file}, the reports."""

    models: dict[str, str]
    report: str = "report.html"
    evidently: str = "evidently.html"


class VersionRecord(RecordPart):
    """Everything the model repository keeps about one version (`record.json`)."""

    name: str
    version: str
    task: str
    algorithm: str
    feature_service: str
    trained_by: TrainedBy
    executor: Executor = Field(default_factory=Executor)
    started_at: str
    ended_at: str
    seconds: float
    code_version: CodeVersion
    libraries: dict[str, str]
    spec: ModelSpec
    params: dict[str, Any]
    search: Search
    features: list[FeatureRef]
    feature_names: list[str]
    categories: dict[str, list[str]] = {}
    data: dict[str, TrainingSet]
    label_shift: float = 0.0
    label_shift_note: str | None = None
    threshold: float | None = None
    distributions: dict[str, dict[str, Any]]
    importance: dict[str, float]
    partial_dependence: dict[str, PartialDependence]
    partitions: list[PartitionDecision]
    metrics: Metrics
    baseline: BaselineSummary
    artifacts: Artifacts | None = None  # set when registered: the record is built before

    def headline(self) -> str:
        """The headline test metrics, e.g. "rmse 29.561, r2 0.283"."""
        test = self.metrics.test.model
        return ", ".join(f"{k} {test[k]:.3f}" for k in ("rmse", "r2", "auc", "f1") if k in test)
