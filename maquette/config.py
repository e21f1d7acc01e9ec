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
from typing import Any, Literal, get_args

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from maquette.data_settings import DatasetSettings, StreamSettings
from maquette.errors import ConfigError
from maquette.model_spec import AlertThresholds, ModelSpec, ReferenceKind, Section, as_utc
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


class RedisSettings(Section):
    """The online store. Without `url`, Maquette runs its own redis-server."""

    url: str | None = Field(
        None, description="Use this Redis (redis://host:port/db) instead of the embedded one."
    )
    host: str = Field("127.0.0.1", description="Interface the embedded redis-server binds to.")
    # 6379 is every Redis's default; a different port keeps the user's own Redis untouched.
    port: int = Field(6399, description="Port of the embedded redis-server.")
    appendfsync: Literal["always", "everysec", "no"] = Field(
        "everysec",
        description="AOF fsync policy of the embedded Redis: everysec loses up to ~1 s of "
        "acknowledged writes if the machine (not the process) crashes; always loses none.",
    )
    start_timeout_s: float = Field(10.0, description="How long to wait for the server to answer.")


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


class ServingSettings(Section):
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
    fast_path: bool = Field(
        True,
        description="Answer POST /predict from Maquette's ASGI route inside the BentoML service "
        "(same request model and JSON, batches concurrent requests); false: BentoML's API method.",
    )
    workers: int = Field(
        1,
        ge=1,
        description="Service worker processes. One batching worker beat two on a 2-core machine; "
        "add workers when cores outnumber them (see BENCHMARKS.md).",
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        description="A request running longer gets 504 (on the fast path a batch already running "
        "finishes first; its Redis calls time out after 5 s, its prediction log writes after "
        "0.6 x this, so they answer 503 first). BentoML keeps every request's timer "
        "this long, so a long timeout means more live objects and longer GC pauses under load.",
    )
    access_log: bool = Field(
        False,
        description="BentoML's per-request access log (off: the prediction log already records "
        "every answered prediction).",
    )
    trace_sample_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="OpenTelemetry sampling for /predict (exporter: BentoML's tracing config); 0 "
        "leaves /predict out of tracing.",
    )
    traffic: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per model: version -> weight, e.g. {v3: 0.9, v4: 0.1}."
    )
    shadow: dict[str, str] = Field(
        default_factory=dict,
        description="Per model: a version scored and logged but never returned.",
    )
    example_row: dict[str, Any] | None = Field(
        None,
        description="A request row (entity keys and request fields) shown as the example of "
        "POST /predict in the service's Swagger UI; none: no example.",
    )


class PredictionLogSettings(Section):
    """Where served predictions go: a Redis Stream, drained into Parquet."""

    stream: str = Field("maquette:predictions", description="Redis Stream of logged predictions.")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Share of predictions logged.")
    folder: Path = Field(
        Path(".maquette/offline/predictions"), description="Drained Parquet files."
    )
    drain_batch: int = Field(
        20_000, ge=1, description="Entries per Parquet file written by the drain."
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


Component = Literal["redis", "prefect", "deployments", "service", "stream"]


class ScheduleSettings(Section):
    """Cron schedule of each flow's deployments (null: deployed, run on demand only)."""

    materialize: str | None = Field("0 * * * *", description="Incremental materialization.")
    drain: str | None = Field("* * * * *", description="Prediction log -> Parquet.")
    monitor: str | None = Field("30 * * * *", description="Monitoring of every model.")
    batch_predict: str | None = Field("0 6 * * *", description="Daily batch scoring per model.")
    train: str | None = Field(
        "0 3 * * 0", description="Retraining per model (monitoring alerts start it too)."
    )


class OrchestrationSettings(Section):
    """`maquette up`: a local Prefect server, the deployments and the components kept running."""

    host: str = Field(
        "127.0.0.1", description="Interface the Prefect server and the deployments' runner bind to."
    )
    # Prefect's default is 4200; another port leaves the user's own Prefect server alone.
    prefect_port: int = Field(4210, description="Port of the local Prefect server (API and UI).")
    runner_port: int = Field(
        4211, description="Health endpoint of the process running the deployments (/health)."
    )
    components: list[Component] = Field(
        default_factory=lambda: list(get_args(Component)),
        description="What `maquette up` starts (dependencies first; `down` stops in reverse).",
    )
    schedules: ScheduleSettings = Field(default_factory=ScheduleSettings)
    timezone: str = Field("UTC", description="Time zone of the cron schedules.")
    batch_entities: str | None = Field(
        None,
        description="Entities scored by the daily batch_predict deployments (Parquet/CSV path "
        "or DuckDB SELECT over the offline store); null: every row of each model's entity "
        "source.",
    )
    batch_output: Path = Field(
        Path(".maquette/batch"),
        description="Daily batch predictions go to <folder>/<model>/<first>_<last>.parquet, "
        "named by the UTC dates of the scored entities' earliest and latest event time.",
    )
    run_limit: int = Field(4, ge=1, description="Flow runs the runner executes at the same time.")
    start_timeout_s: float = Field(
        180.0, description="How long `up` waits for a component to answer its health check."
    )
    stop_timeout_s: float = Field(
        20.0, description="How long `down` waits after SIGTERM before sending SIGKILL."
    )
    settle_s: int = Field(
        3,
        ge=1,
        description="A component alive this long after a (re)start counts as started; one that "
        "exits sooner is retried with a growing delay (supervisord's startsecs).",
    )
    start_retries: int = Field(
        5,
        ge=0,
        description="Failed starts in a row before a crash-looping component is given up "
        "(`maquette status` says so; `maquette up` tries again).",
    )

    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"


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
    demo: DemoSettings = Field(default_factory=DemoSettings)
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
            f"invalid settings in {file} or MAQUETTE_* variables:\n{exc}",
            "Fix the named field (README 'Settings' lists every field).",
        ) from exc
