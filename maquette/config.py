"""Settings: one typed object, read once from `maquette.yaml` plus `MAQUETTE_*` environment overrides.

Every path, port and URL Maquette uses lives here. Relative paths are relative to the project
directory (the folder holding `maquette.yaml`). Environment variables override the file, one
underscore between section and field: `MAQUETTE_REDIS_URL`, `MAQUETTE_PATHS_STATE`,
`MAQUETTE_FEAST_PROJECT`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from redis.crc import key_slot

from maquette.data_settings import DatasetSettings, StreamSettings
from maquette.errors import ConfigError
from maquette.model_spec import (
    AlertThresholds,
    ModelSpec,
    ReferenceKind,
    Section,
    TrainingSettings,
    as_utc,
)
from maquette.platform_settings import (
    ConsoleSettings,
    OrchestrationSettings,
    PredictionLogSettings,
    RedisSettings,
    ServingSettings,
)
from maquette.window_spec import FORMS as WINDOW_FORMS
from maquette.window_spec import DurationText, WindowSpec, WindowText, parse_window

SETTINGS_FILE = "maquette.yaml"


class PathsSettings(Section):
    """Where Maquette keeps things on disk."""

    state: Path = Field(Path(".maquette"), description="Git-ignored folder for all runtime state.")
    offline_store: Path = Field(
        Path(".maquette/offline"), description="Parquet offline store (sources and feature tables)."
    )
    feature_repo: Path = Field(Path("feature_repo"), description="Feast feature repository.")
    # Flows and the bento are the project's own files, so a wheel install plus a project folder
    # works and one project never runs another's code.
    flows: Path = Field(Path("flows"), description="Folder of the project's Prefect flow files.")
    bentos: Path = Field(
        Path("bentos"), description="Folder of the project's BentoML service and bentofile.yaml."
    )
    reports: Path = Field(Path(".maquette/reports"), description="HTML reports.")


class FeastSettings(Section):
    """How Maquette drives Feast in-process (feature_store.yaml mirrors the defaults)."""

    project: str = Field("maquette", description="Feast project name.")
    registry: Path = Field(Path(".maquette/feast/registry.db"), description="Feast file registry.")
    feature_service: str | None = Field(
        None,
        description="Feature service used when a call names none (null: every call names one).",
    )
    materialize_batch_rows: int = Field(
        50_000, description="Rows encoded and written to Redis per batch (bounds memory)."
    )
    duckdb_memory_limit: str = Field(
        "4GB", description="DuckDB memory cap for training frames; larger work spills to disk."
    )
    offline_engine: Literal["duckdb", "spark"] = Field(
        "duckdb",
        description="What computes training frames and reads the rows materialization writes: "
        "duckdb (ASOF joins in this process), or spark (an as-of join on Spark and Feast's "
        "Spark store's reads, on spark_master; the spark extra and Java 17). Feast's "
        "point-in-time rules on both (tested).",
    )
    spark_master: str = Field(
        "local[*]",
        description="Spark master for offline_engine spark: local[N] runs Spark in this "
        "machine's JVM (driver on loopback), spark://host:7077 or yarn joins a cluster.",
    )
    spark_conf: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="More Spark settings for offline_engine spark (spark.driver.memory, "
        "spark.executor.memory, ...); the session time zone is always UTC.",
    )


class RegistrySettings(Section):
    """The model repository, built on BentoML's model store."""

    # In the project by default: with BentoML's own default (~/bentoml) shared by every
    # project, one project's service could serve another's models.
    bentoml_home: Path | None = Field(
        Path(".maquette/bentoml"),
        description="BentoML home holding the model store; null: $BENTOML_HOME, else ~/bentoml "
        "(shared with every project on the machine).",
    )
    aliases: Path = Field(
        Path(".maquette/registry/aliases.json"), description="Alias table and its history."
    )
    shared_store: str | None = Field(
        None,
        description="A folder every machine mounts, or an FS URL (BentoML's export_model: "
        "s3://bucket/models, ...), holding the versions aliases, splits and shadows point at: "
        "promote and route publish them there, and a service missing one imports it from "
        "there. Null: each machine's own store only.",
    )
    alias_store: Literal["file", "redis"] = Field(
        "file",
        description="Where the alias table and its history live: file (registry.aliases, one "
        "machine), or redis (the project's Redis or Redis Cluster, under "
        "maquette:{feast project}:aliases): every replica of the service then reads the same "
        "table and follows a move within a second.",
    )


class MonitoringSettings(Section):
    """Live metrics, Evidently reports, skew and freshness checks, alerts."""

    windows: list[WindowText] = Field(
        ["daily", "hourly"],
        min_length=1,
        description="Live-metric series kept (charts); the first is the models' default alert "
        f"window. Each one of: {WINDOW_FORMS}.",
    )
    report_window: WindowText = Field(
        "weekly",
        description="One Evidently drift + quality report per this window (the models' default "
        "drift window).",
    )
    reference: ReferenceKind = Field(
        "trailing",
        description="Drift reference of the models: training (a sample of the train split), "
        "trailing (the reference_trailing period before each window) or season (the same "
        "period reference_season earlier).",
    )
    reference_trailing: DurationText = Field(
        "28d", description="Length of the trailing reference before each drift window."
    )
    reference_season: DurationText = Field(
        "364d", description="How far back the season reference lies (364d keeps weekdays)."
    )
    reference_min_rows: int = Field(
        200,
        ge=1,
        description="A trailing or season reference with fewer rows falls back to training "
        "(the report says so).",
    )
    drift_large_sample: int = Field(
        1000,
        ge=1,
        description="Windows with at least this many rows use distance tests (Wasserstein, "
        "Jensen-Shannon); smaller ones p-value tests (K-S, chi-square).",
    )
    drift_fdr: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Benjamini-Hochberg false discovery rate over one report's p-value tests.",
    )
    drift_distance_threshold: float = Field(
        0.1,
        gt=0,
        description="A column drifts when its Wasserstein (normed) or Jensen-Shannon distance "
        "is above this.",
    )
    label_wait: DurationText = Field(
        "1d",
        description="A complete window with too few labels is judged again until this long "
        "after its end; then it is final as 'not enough data'.",
    )
    reference_rows: int = Field(
        20_000, ge=100, description="Training rows sampled as the drift reference."
    )
    report_rows: int = Field(
        30_000, ge=100, description="Served rows sampled per report window (above: sampled)."
    )
    skew_sample: int = Field(
        200,
        ge=1,
        description="Logged predictions per alert window whose features are recomputed offline.",
    )
    skew_tolerance: float = Field(
        1e-6, ge=0, description="Relative difference under which two values agree."
    )
    workspace: Path = Field(
        Path(".maquette/evidently"), description="Evidently workspace (`evidently ui`)."
    )
    join_memory_limit: str = Field(
        "1GB", description="DuckDB memory cap of the label join; larger logs spill to disk."
    )
    webhook: str | None = Field(None, description="Alerts are POSTed here as JSON, if set.")
    webhook_timeout_s: float = Field(5.0, description="Give up on the webhook after this.")


@dataclass(frozen=True)
class ResolvedMonitoring:
    """One model's monitoring with the project defaults filled in (`Settings.monitoring_of`)."""

    model: str
    alert_window: WindowSpec  # accuracy, missing features, skew
    drift_window: WindowSpec  # drift reports
    reference: str  # "training" | "trailing" | "season"
    open_after: int
    resolve_after: int
    thresholds: AlertThresholds


class DemoSettings(Section):
    """What `maquette demo` replays after training: live traffic over a stretch of history."""

    replay_start: datetime | None = Field(
        None, description="First instant replayed (UTC); `maquette demo` needs it."
    )
    replay_end: datetime | None = Field(
        None, description="End of the replay (UTC, exclusive); `maquette demo` needs it."
    )
    quick_days: float = Field(2.0, gt=0, description="Days replayed by `maquette demo --quick`.")
    slot_minutes: int = Field(
        60, ge=1, description="The replay clock's step: materialize, stream, then predict a slot."
    )

    @field_validator("replay_start", "replay_end", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        return None if value is None else as_utc(value)


class Settings(BaseSettings):
    """All of Maquette's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="MAQUETTE_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
    )

    project_dir: Path = Field(Path("."), description="Folder holding maquette.yaml.")
    paths: PathsSettings = Field(default_factory=PathsSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    predictions: PredictionLogSettings = Field(default_factory=PredictionLogSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    demo: DemoSettings = Field(default_factory=DemoSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    models: dict[str, ModelSpec] = Field(default_factory=dict, description="Model specs by name.")

    @model_validator(mode="after")
    def _stream_keys_in_one_slot(self) -> Settings:
        """On a Redis Cluster, the stream processor's commit (one MULTI) touches the stream,
        its state, its counters and the dead letters: they must hash to one slot."""
        if not self.redis.cluster:
            return self
        conf = self.stream
        if "{" not in conf.stream and conf.dead_letter.startswith(conf.stream):
            # `events` and `events:dead` become `{events}` and `{events}:dead`: the hash tag a
            # cluster needs, with nothing to rename by hand. Other names are checked below.
            rest = conf.dead_letter[len(conf.stream) :]
            conf.stream = f"{{{conf.stream}}}"
            conf.dead_letter = conf.stream + rest
        keys = [conf.stream, f"{conf.stream}:state", f"{conf.stream}:stats", conf.dead_letter]
        if len({key_slot(k.encode()) for k in keys}) > 1:
            raise ValueError(
                f"on a Redis Cluster the event stream {conf.stream!r} and its dead letters "
                f"{conf.dead_letter!r} must share a hash tag (one transaction commits both): "
                f"name them like '{{{conf.stream.strip('{}')}}}' and "
                f"'{{{conf.stream.strip('{}')}}}:dead'"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the project file, which arrives as init kwargs.
        return (env_settings, init_settings)

    def path(self, relative: Path) -> Path:
        """Absolute path of a setting relative to the project directory."""
        return relative if relative.is_absolute() else (self.project_dir / relative).resolve()

    @property
    def state_dir(self) -> Path:
        return self.path(self.paths.state)

    @property
    def offline_store(self) -> Path:
        return self.path(self.paths.offline_store)

    @property
    def feature_repo(self) -> Path:
        return self.path(self.paths.feature_repo)

    @property
    def registry_path(self) -> Path:
        return self.path(self.feast.registry)

    def model_spec(self, name: str) -> ModelSpec:
        """The spec of a declared model, or ConfigError listing the declared ones."""
        if name not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(
                f"no model named {name!r} in maquette.yaml.", f"Declared models: {known}."
            )
        return self.models[name]

    def monitoring_of(self, name: str) -> ResolvedMonitoring:
        """How monitoring watches model `name`: its own settings, else the project's defaults."""
        own = self.model_spec(name).monitoring
        defaults = self.monitoring
        return ResolvedMonitoring(
            model=name,
            alert_window=parse_window(own.window or defaults.windows[0]),
            drift_window=parse_window(own.drift_window or defaults.report_window),
            reference=own.reference or defaults.reference,
            open_after=own.open_after,
            resolve_after=own.resolve_after,
            thresholds=own.thresholds,
        )

    def entity_source(self, spec: ModelSpec | None = None) -> str:
        """The table of entities, event times and labels: the model's own, else the dataset's."""
        source = (spec.entity_source if spec else None) or self.dataset.entity_source
        if source is None:
            raise ConfigError(
                "dataset.entity_source is not set, so no table is known to hold the entities.",
                "Set dataset.entity_source in maquette.yaml to the source table with the entity "
                "keys, event times and labels (or entity_source on the model).",
            )
        return source

    def default_feature_service(self) -> str:
        """The feature service a call uses when it names none (feast.feature_service)."""
        if self.feast.feature_service is None:
            raise ConfigError(
                "no feature service was named and feast.feature_service is not set.",
                "Name the feature service in the call, or set feast.feature_service in "
                "maquette.yaml to one defined in the feature repo.",
            )
        return self.feast.feature_service


def alert_window(settings: Settings, name: str) -> WindowSpec:
    """The window accuracy, missing-feature and skew verdicts of model `name` are judged in."""
    return settings.monitoring_of(name).alert_window


def drift_window(settings: Settings, name: str) -> WindowSpec:
    """The window of model `name`'s drift reports."""
    return settings.monitoring_of(name).drift_window


def reference_kind(settings: Settings, name: str) -> str:
    """The drift reference kind of model `name`: training, trailing or season."""
    return settings.monitoring_of(name).reference


def find_project_dir(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding maquette.yaml (else `start`)."""
    if env_dir := os.environ.get("MAQUETTE_PROJECT_DIR"):
        return Path(env_dir).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / SETTINGS_FILE).is_file():
            return folder
    return here


def load_settings(project_dir: Path | str | None = None) -> Settings:
    """Read maquette.yaml from the project directory and apply MAQUETTE_* overrides."""
    folder = Path(project_dir).resolve() if project_dir else find_project_dir()
    file = folder / SETTINGS_FILE
    data: dict[str, Any] = {}
    if file.is_file():
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{file} is not valid YAML: {exc}", "Fix the file and retry."
            ) from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{file} must hold a mapping of sections.", "See README 'Settings'.")
    try:
        return Settings(**{**data, "project_dir": folder})
    except ValidationError as exc:
        raise ConfigError(
            f"invalid settings in {file} or MAQUETTE_* variables:\n{_refusals(exc)}",
            "Fix the named field (README 'Settings' lists every field).",
        ) from None  # pydantic's own text repeats each refused value, a URL's password too


def _refusals(exc: ValidationError) -> str:
    """One line per refused field: where and why, never the value given (a URL may hold a
    password, and no pattern finds every password in a URL)."""
    lines = [f"{exc.error_count()} setting(s) refused:"]
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "(the file)"
        lines.append(f"{where}\n  {error['msg']}")
    return "\n".join(lines)
