"""A fresh project per replay of `maquette bench alerts`, made from the user's project.

Each replay (clean, faulty) gets a folder of its own under `<state>/bench/alerts/<run>/` with
a `maquette.yaml` derived from the project's settings: its own state, offline store (the
project's feature tables copied, nothing served), Feast registry and project name (so its
Redis keys end differently), Redis database, event stream and prediction log stream, Evidently
workspace and reports. It reuses the project's trained versions (same model store, alias table
copied) and feature repo (copied, so its sources read the copy's tables). No webhook is
called and no alert retrains: the benchmark measures alerts, it does not act on them.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from maquette.config import SETTINGS_FILE, Settings, load_settings
from maquette.data.redis_server import ensure_redis
from maquette.data.secrets import write_private
from maquette.data.sources import feature_table_path
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.errors import DataNotLoaded
from maquette.features.layer import FeatureLayer
from maquette.stream.aggregations import stream_definition
from maquette.stream.backfill import write_parquet_durably
from maquette.stream.operations import reset

# What a replay project never copies from the project's offline store: what was served.
SERVED = ("predictions*", "scored", "labels", "monitoring", "bench*")
# The project's stored Redis database unless told otherwise (the other benchmarks use 1).
DEFAULT_DB = 2


def alerts_dir(settings: Settings) -> Path:
    """Where the alert benchmark keeps its replay projects: `<state>/bench/alerts`."""
    return settings.state_dir / "bench" / "alerts"


def has_stream(settings: Settings) -> bool:
    """Whether the project declares a speed layer (a stream definition or aggregations)."""
    conf = settings.stream
    return bool(conf.definition or conf.events or conf.aggregations)


def _absolute(settings: Settings, value: Any) -> Any:
    return None if value is None else str(settings.path(Path(value)))


def replay_config(source: Settings, folder: Path, run: str, redis: str) -> dict[str, Any]:
    """The replay project's maquette.yaml content: the source's settings, every state path in
    `folder`, every shared input (model store, flows, sources) by absolute path."""
    # Credentials stay out of the file (dumped, a SecretStr is "**********"): the replay reads
    # them as the project does, from MAQUETTE_* variables or the generated secret files.
    left_out: dict[str, Any] = {
        "project_dir": True,
        "redis": {"password"},
        "serving": {"api_key"},
        "orchestration": {"prefect_auth"},
    }
    data: dict[str, Any] = source.model_dump(mode="json", exclude=left_out)
    state = folder / ".maquette"
    data["paths"].update(
        state=str(state),
        offline_store=str(state / "offline"),
        feature_repo=str(folder / "feature_repo"),
        flows=_absolute(source, source.paths.flows),
        bentos=_absolute(source, source.paths.bentos),
        reports=str(state / "reports"),
    )
    data["redis"]["url"] = redis
    data["feast"].update(project=f"alerts_{run}", registry=str(state / "feast" / "registry.db"))
    data["registry"].update(
        bentoml_home=_absolute(source, source.registry.bentoml_home),
        aliases=str(state / "registry" / "aliases.json"),
    )
    data["predictions"].update(
        stream=f"maquette:alerts:{run}:predictions", folder=str(state / "offline" / "predictions")
    )
    for key in ("stream", "dead_letter"):
        data["stream"][key] = f"{getattr(source.stream, key)}:alerts:{run}"
    data["monitoring"].update(workspace=str(state / "evidently"), webhook=None)
    data["orchestration"]["batch_output"] = str(state / "batch")
    for name, spec in source.dataset.sources.items():
        data["dataset"]["sources"][name]["path"] = _absolute(source, spec.path)
    data["dataset"]["feature_sql"] = _absolute(source, source.dataset.feature_sql)
    for spec in data["models"].values():
        spec["monitoring"]["retrain_on_alert"] = False
    return data


def _forget_streamed_rows(settings: Settings, before: datetime) -> None:
    """Keep only the streamed views' rows before `before`: the replay's stream writes the rest
    (whatever a demo streamed into the project later is not this replay's)."""
    con = duckdb_connection(quiet=True)
    for agg in stream_definition(settings).aggregations:
        path = feature_table_path(settings, agg.view)
        if path.is_file():
            kept = (
                f"SELECT * FROM read_parquet({sql_literal(path)}) "
                f"WHERE event_timestamp < {sql_literal(before.isoformat())}::TIMESTAMPTZ"
            )
            write_parquet_durably(con, kept, path)


def stream_start(settings: Settings, start: datetime) -> datetime:
    """Where the replay's stream takes over from the batch layer's history."""
    before = settings.stream.backfill_before
    return min(before, start) if before else start


def replay_project(
    source: Settings,
    folder: Path,
    run: str,
    redis_db: int = DEFAULT_DB,
    start: datetime | None = None,
) -> Settings:
    """A fresh project in `folder` for one replay starting at `start` (see the module doc);
    its Redis keys, streams and prediction log emptied, its registry applied."""
    if not source.offline_store.is_dir():
        raise DataNotLoaded(
            f"the project's offline store {source.offline_store} does not exist.",
            "Run `maquette data load` and train the models (`maquette demo --quick` does both).",
        )
    base = ensure_redis(source).rsplit("/", 1)[0]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copytree(
        source.feature_repo,
        folder / "feature_repo",
        ignore=shutil.ignore_patterns("__pycache__", "data", ".aliases.json"),
    )
    config = replay_config(source, folder, run, f"{base}/{redis_db}")
    # Private: its redis.url carries the password of the project's Redis.
    write_private(folder / SETTINGS_FILE, yaml.safe_dump(config, sort_keys=False))
    settings = load_settings(folder)
    shutil.copytree(
        source.offline_store, settings.offline_store, ignore=shutil.ignore_patterns(*SERVED)
    )
    aliases = source.path(source.registry.aliases)
    target = settings.path(settings.registry.aliases)
    target.parent.mkdir(parents=True, exist_ok=True)
    if aliases.is_file():
        shutil.copyfile(aliases, target)
    layer = FeatureLayer(settings)
    layer.apply()
    _empty_redis(settings, layer)
    if has_stream(settings):
        _forget_streamed_rows(settings, stream_start(settings, start or datetime.now(UTC)))
    return settings


def _empty_redis(settings: Settings, layer: FeatureLayer) -> None:
    """This replay's keys only: its Feast project's rows, its streams and their state."""
    layer.clear_online()
    layer.redis.delete(settings.predictions.stream)
    if has_stream(settings):
        reset(settings)
