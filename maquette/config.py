"""Settings: one typed object, read once from `maquette.yaml` plus `MAQUETTE_*` environment overrides.

Every path, port and URL Maquette uses lives here. Relative paths are relative to the project
directory (the folder holding `maquette.yaml`). Environment variables override the file, one
underscore between section and field: `MAQUETTE_REDIS_URL`, `MAQUETTE_PATHS_STATE`,
`MAQUETTE_FEAST_PROJECT`.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from maquette.errors import ConfigError

SETTINGS_FILE = "maquette.yaml"


class _Section(BaseModel):
    # A misspelt setting must fail loudly, not silently fall back to its default.
    model_config = ConfigDict(extra="forbid")


class PathsSettings(_Section):
    """Where Maquette keeps things on disk."""

    state: Path = Field(Path(".maquette"), description="Git-ignored folder for all runtime state.")
    offline_store: Path = Field(
        Path(".maquette/offline"), description="Parquet offline store (sources and feature tables)."
    )
    feature_repo: Path = Field(Path("feature_repo"), description="Feast feature repository.")
    reports: Path = Field(Path(".maquette/reports"), description="HTML reports.")


class RedisSettings(_Section):
    """The online store. Without `url`, Maquette runs its own redis-server."""

    url: str | None = Field(
        None, description="Use this Redis (redis://host:port/db) instead of the embedded one."
    )
    host: str = Field("127.0.0.1", description="Interface the embedded redis-server binds to.")
    # 6379 is every Redis's default; a different port keeps the user's own Redis untouched.
    port: int = Field(6399, description="Port of the embedded redis-server.")
    appendfsync: str = Field("everysec", description="AOF fsync policy of the embedded Redis.")
    start_timeout_s: float = Field(10.0, description="How long to wait for the server to answer.")


class FeastSettings(_Section):
    """How Maquette drives Feast in-process (feature_store.yaml mirrors the defaults)."""

    project: str = Field("maquette", description="Feast project name.")
    registry: Path = Field(Path(".maquette/feast/registry.db"), description="Feast file registry.")
    feature_service: str = Field(
        "flight_delay", description="Feature service used when none is named."
    )
    materialize_batch_rows: int = Field(
        50_000, description="Rows encoded and written to Redis per batch (bounds memory)."
    )
    duckdb_memory_limit: str = Field(
        "4GB", description="DuckDB memory cap for training frames; larger work spills to disk."
    )


class DatasetSettings(_Section):
    """The data loaded into the offline store by `maquette data load`."""

    module: str | None = Field(
        "maquette.demo.nycflights13",
        description="Python module with source_tables() and FEATURE_TABLES (SQL by table name).",
    )
    sources: dict[str, Path] = Field(
        default_factory=dict, description="Source tables as Parquet/CSV paths, by table name."
    )
    feature_sql: Path | None = Field(
        None, description="Folder of <feature_table>.sql files run by DuckDB over the sources."
    )
    entity_source: str = Field(
        "flights", description="Source table holding entities, event times and labels."
    )


class TimeWindow(_Section):
    """[start, end) in UTC; plain dates mean UTC midnight."""

    start: datetime
    end: datetime

    @field_validator("start", "end", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class SplitSettings(_Section):
    """Time-based split: the model never sees a later window while fitting an earlier one."""

    train: TimeWindow = Field(description="Rows the model is fitted on.")
    validation: TimeWindow = Field(
        description="Rows for early stopping, search and partition choice."
    )
    test: TimeWindow = Field(description="Rows for the final, untouched evaluation.")


class SearchSettings(_Section):
    """Hyperparameter search: random sampling of `space` for `trials` fits."""

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


class LabelSpec(_Section):
    """Where a model's labels come from once they are known, and how they meet predictions."""

    source: str | None = Field(
        None, description="Table with the labels (default: the model's entity source)."
    )
    join_keys: list[str] = Field(description="Columns that match the logged entity keys.")
    time_column: str = Field(
        "scheduled_departure", description="Column matching the logged request time field."
    )
    available_at: str | None = Field(
        None, description="Column saying when each label became known."
    )


class ModelSpec(_Section):
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


class RegistrySettings(_Section):
    """The model repository, built on BentoML's model store."""

    bentoml_home: Path | None = Field(
        None, description="BentoML home holding the model store (default: BentoML's, ~/bentoml)."
    )
    aliases: Path = Field(
        Path(".maquette/registry/aliases.json"), description="Alias table and its history."
    )


class ServingSettings(_Section):
    """The online prediction service (BentoML) and library mode."""

    host: str = Field(
        "127.0.0.1", description="Interface the service binds to (loopback by default)."
    )
    port: int = Field(3000, description="HTTP port of the service.")
    api_key: str | None = Field(
        None, description="If set, /predict needs `Authorization: Bearer <key>`."
    )
    default_alias: str = Field(
        "production", description="Alias used when a request names only NAME."
    )
    max_rows: int = Field(1000, ge=1, description="Largest batch one request may carry.")
    traffic: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per model: version -> weight, e.g. {v3: 0.9, v4: 0.1}."
    )
    shadow: dict[str, str] = Field(
        default_factory=dict,
        description="Per model: a version scored and logged but never returned.",
    )


class PredictionLogSettings(_Section):
    """Where served predictions go: a Redis Stream, drained into Parquet."""

    stream: str = Field("maquette:predictions", description="Redis Stream of logged predictions.")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Share of predictions logged.")
    folder: Path = Field(
        Path(".maquette/offline/predictions"), description="Drained Parquet files."
    )
    drain_batch: int = Field(
        20_000, ge=1, description="Entries per Parquet file written by the drain."
    )


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
    models: dict[str, ModelSpec] = Field(default_factory=dict, description="Model specs by name.")

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
            f"invalid settings in {file} or MAQUETTE_* variables:\n{exc}",
            "Fix the named field (README 'Settings' lists every field).",
        ) from exc
