"""The model repository: every trained version in BentoML's model store, with its full record.

A version is a BentoML model tagged `NAME:vN` (so `bentoml models list` shows it and bentos can
pack it). Its folder holds the learned models (parent and partitions), `record.json` (who,
when, code, configuration, search, data, distributions, importance, metrics), `report.html`
and `evidently.html`. BentoML has no aliases, so `NAME@alias` lives in a small JSON table
(with the history of every move: who, when, from which version) beside the state folder, or,
with `registry.alias_store: redis`, in the project's Redis where every service replica reads it.

References accepted everywhere: `NAME` (latest), `NAME:VERSION`, `NAME@ALIAS`.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import math
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar, cast

import redis

from maquette.config import Settings
from maquette.data.redis_server import redis_url, unreachable
from maquette.data.secrets import redact
from maquette.data.shared_files import exclusive, lock_path
from maquette.errors import ModelVersionNotFound, StoreUnavailable
from maquette.features.redis_cluster import CLUSTER_DOWN, shared_client
from maquette.version_record import Artifacts, VersionRecord

log = logging.getLogger("maquette.registry")
LABEL_KEY = "maquette"  # BentoML label marking Maquette's models
T = TypeVar("T")


def bentoml_module(settings: Settings) -> Any:
    """BentoML, pointed at the configured home (it reads BENTOML_HOME when first imported)."""
    if settings.registry.bentoml_home:
        os.environ["BENTOML_HOME"] = str(settings.path(settings.registry.bentoml_home))
    import bentoml

    return bentoml


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: str
    path: Path
    created: datetime

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @cached_property
    def record(self) -> VersionRecord:
        return VersionRecord.model_validate_json((self.path / "record.json").read_text())

    @property
    def report(self) -> Path:
        return self.path / "report.html"


def _number(version: str) -> int:
    return int(version[1:]) if version.startswith("v") and version[1:].isdigit() else -1


def list_versions(settings: Settings, name: str | None = None) -> list[ModelVersion]:
    """Registered versions, oldest first per model."""
    bentoml = bentoml_module(settings)
    found = []
    try:
        models = bentoml.models.list(name) if name else bentoml.models.list()
    except bentoml.exceptions.NotFound:
        return []
    for model in models:
        if model.info.labels.get(LABEL_KEY) != "model":
            continue
        found.append(
            ModelVersion(
                model.tag.name, model.tag.version, Path(model.path), model.info.creation_time
            )
        )
    return sorted(found, key=lambda v: (v.name, _number(v.version)))


def next_version(settings: Settings, name: str) -> str:
    """The next free number: past every version here and in a shared folder (another
    machine's trainings), so two machines never publish different models as one tag."""
    numbers = [_number(v.version) for v in list_versions(settings, name)]
    numbers += _shared_numbers(settings, name)
    return f"v{max(numbers, default=0) + 1}"


def resolve(settings: Settings, ref: str) -> ModelVersion:
    """`NAME`, `NAME:VERSION` or `NAME@ALIAS` -> the version, or an error listing what exists."""
    name, version, alias = ref, None, None
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif ":" in ref:
        name, version = ref.split(":", 1)
    versions = list_versions(settings, name)
    if alias is not None:
        version = _aliased(settings, name, alias)
    missing = version is not None and version not in {v.version for v in versions}
    # Trained on another machine: this process's store imports it from the shared one.
    if missing and version is not None and _import_shared(settings, name, version):
        versions = list_versions(settings, name)
    if not versions:
        names = sorted({v.name for v in list_versions(settings)})
        shared = settings.registry.shared_store
        raise ModelVersionNotFound(
            f"no model named {name!r} is registered"
            + (f" here or in the shared store {redact(shared)}." if shared else "."),
            f"Registered models: {', '.join(names) or 'none'}; train one with "
            f"`maquette train {name}`.",
        )
    if version is None:
        return versions[-1]
    for candidate in versions:
        if candidate.version == version:
            return candidate
    shared = settings.registry.shared_store
    raise ModelVersionNotFound(
        f"model {name!r} has no version {version!r}"
        + (f" here or in the shared store {redact(shared)}." if shared else "."),
        f"Versions: {', '.join(v.version for v in versions)}."
        + (" Promote it on the machine that trained it: that publishes it." if shared else ""),
    )


def _aliased(settings: Settings, name: str, alias: str) -> str:
    aliases = _read_aliases(settings)["aliases"].get(name, {})
    if alias not in aliases:
        if not list_versions(settings, name) and not aliases:
            names = sorted({v.name for v in list_versions(settings)})
            raise ModelVersionNotFound(
                f"no model named {name!r} is registered.",
                f"Registered models: {', '.join(names) or 'none'}; train one with "
                f"`maquette train {name}`.",
            )
        known = ", ".join(f"@{a} -> {v}" for a, v in sorted(aliases.items())) or "none yet"
        raise ModelVersionNotFound(
            f"model {name!r} has no alias {alias!r}.",
            f"Aliases of {name}: {known}. Set one with "
            f"`maquette models promote {name}:VERSION --alias {alias}`.",
        )
    return str(aliases[alias])


# --------------------------------------------------------------------- the shared model store


def shared_location(settings: Settings, name: str, version: str) -> str:
    """Where a version lives in `registry.shared_store`: `<store>/<name>-<version>.bentomodel`
    (a folder relative to the project, or an FS URL)."""
    store = str(settings.registry.shared_store).rstrip("/")
    if not _is_url(store):
        store = str(settings.path(Path(store.removeprefix("file://"))))
    return f"{store}/{name}-{version}.bentomodel"


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _shared_numbers(settings: Settings, name: str) -> list[int]:
    """Version numbers of NAME already in a shared folder (another machine's trainings)."""
    if not settings.registry.shared_store or _is_url(settings.registry.shared_store):
        return []
    folder = Path(shared_location(settings, name, "v0")).parent
    return [
        _number(p.name[len(name) + 1 :].removesuffix(".bentomodel"))
        for p in folder.glob(f"{name}-v*.bentomodel")
    ]


def publish(settings: Settings, ref: str) -> str | None:
    """Export a version to `registry.shared_store` with BentoML's export_model (a folder, or an
    FS URL such as s3://bucket/models: its fsspec package, e.g. s3fs, installed), where every
    replica can import it; None without one. In a folder the file appears whole (written to a
    file of its own, fsynced, renamed): a replica importing it never reads half of it."""
    if not settings.registry.shared_store:
        return None
    found = resolve(settings, ref)
    bentoml = bentoml_module(settings)
    target = shared_location(settings, found.name, found.version)
    aside: str | None = None
    try:
        if _is_url(target):
            return str(bentoml.models.export_model(found.tag, target, "gz"))
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, aside = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        bentoml.models.export_model(found.tag, aside, "gz")
        with open(aside, "rb") as written:
            os.fsync(written.fileno())
        os.replace(aside, path)
        aside = None
        return str(path)
    except Exception as exc:  # fsspec's errors vary by protocol (ImportError: s3fs missing)
        raise StoreUnavailable(
            redact(
                f"cannot publish {found.tag} to the shared model store "
                f"{settings.registry.shared_store}: {type(exc).__name__}: {exc}"
            ),
            "Check registry.shared_store (a folder every machine mounts, or an FS URL whose "
            "fsspec package is installed and whose credentials are in the environment), then "
            "run the command again.",
        ) from exc
    finally:
        if aside is not None:
            Path(aside).unlink(missing_ok=True)


def _import_shared(settings: Settings, name: str, version: str) -> bool:
    """Import NAME:VERSION from the shared store into this process's store; False when the
    store has none (or no shared store is set). One import per version at a time on this
    machine (a lock in the state folder): BentoML's store is not safe for two at once."""
    if not settings.registry.shared_store:
        return False
    source = shared_location(settings, name, version)
    if not _is_url(source) and not Path(source).is_file():
        return False
    bentoml = bentoml_module(settings)
    with exclusive(lock_path(settings, f"model-import-{name}-{version}"), 300):
        if any(v.version == version for v in list_versions(settings, name)):
            return True  # another process imported it while this one waited
        try:
            bentoml.models.import_model(source, "gz")
        except Exception as exc:  # a missing object, a torn archive, a missing fsspec package
            log.warning("could not import %s:%s from %s: %s", name, version, redact(source), exc)
            return False
    return True


# ------------------------------------------------------------------------------- aliases


def _aliases_path(settings: Settings) -> Path:
    return settings.path(settings.registry.aliases)


def _empty() -> dict[str, Any]:
    return {"aliases": {}, "history": []}


def _alias_key(settings: Settings) -> str:
    # A hash tag: the table and its serial stay in one slot (one MULTI) on a cluster too.
    return f"maquette:{{{settings.feast.project}}}:aliases"


def _alias_redis(settings: Settings) -> redis.Redis[bytes]:
    # One client (and connection pool) per Redis: a service polls the serial 4 times a second.
    cluster = tuple(settings.redis.cluster)
    where = (cluster, settings.redis.password) if cluster else (redis_url(settings),)
    client = _alias_clients.get(where)
    if client is None:
        client = _alias_clients[where] = shared_client(settings, 5.0)
    return client


# The alias store's clients, by where they connect (a few per process at most).
_alias_clients: dict[tuple[object, ...], redis.Redis[bytes]] = {}


def _read_aliases(settings: Settings) -> dict[str, Any]:
    if settings.registry.alias_store == "redis":
        try:
            raw = _alias_redis(settings).get(_alias_key(settings))
        except (redis.RedisError, *CLUSTER_DOWN) as exc:
            raise unreachable(settings, exc) from exc
        return cast(dict[str, Any], json.loads(raw)) if raw else _empty()
    path = _aliases_path(settings)
    if not path.is_file():
        return _empty()
    return cast(dict[str, Any], json.loads(path.read_text()))


def alias_stamp(settings: Settings) -> int | None:
    """Changes whenever the alias table does (the file's mtime, or the table's serial in
    Redis), so a reader re-reads the table only then."""
    if settings.registry.alias_store == "redis":
        raw = _alias_redis(settings).get(_alias_key(settings) + ":serial")
        return int(raw) if raw else None
    try:
        return os.stat(_aliases_path(settings)).st_mtime_ns
    except FileNotFoundError:
        return None


def _update_aliases(settings: Settings, change: Callable[[dict[str, Any]], T]) -> T:
    """Read-modify-write the alias table: under a file lock (replaced atomically), or in Redis
    with WATCH/MULTI (a concurrent move makes this one start over), the serial bumped."""
    if settings.registry.alias_store == "redis":
        key = _alias_key(settings)
        try:
            # transaction=True: a cluster's pipeline only WATCHes in a transaction.
            with _alias_redis(settings).pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        raw = cast("bytes | None", pipe.get(key))  # immediate while watching
                        table = json.loads(raw) if raw else _empty()
                        result = change(table)
                        pipe.multi()
                        pipe.set(key, json.dumps(table))
                        pipe.incr(key + ":serial")
                        pipe.execute()
                        return result
                    except redis.WatchError:
                        continue
        except (redis.ConnectionError, *CLUSTER_DOWN) as exc:
            raise unreachable(settings, exc) from exc
    path = _aliases_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = _read_aliases(settings)
        result = change(table)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=2))
        os.replace(tmp, path)
    return result


def promote(settings: Settings, ref: str, alias: str = "production") -> dict[str, Any]:
    """Point `NAME@alias` at a version; the move is appended to the alias history."""
    if not alias or not alias.replace("-", "").replace("_", "").isalnum():
        raise ModelVersionNotFound(
            f"alias {alias!r} is not a valid name.", "Use letters, digits, - or _."
        )
    version = resolve(settings, ref)
    publish(settings, version.tag)  # before the alias moves: replicas find what it points at

    def move(table: dict[str, Any]) -> dict[str, Any]:
        current = table["aliases"].setdefault(version.name, {})
        made = {
            "name": version.name,
            "alias": alias,
            "version": version.version,
            "previous": current.get(alias),
            "by": f"{getpass.getuser()}@{socket.gethostname()}",
            "at": datetime.now(UTC).isoformat(),
        }
        current[alias] = version.version
        table["history"].append(made)
        return made

    return _update_aliases(settings, move)


def route(
    settings: Settings,
    name: str,
    traffic: dict[str, float] | None = None,
    shadow: str | None = None,
) -> dict[str, Any]:
    """Set how requests for NAME (no alias, no version) are routed, in the alias table every
    replica reads: `traffic` {version: weight}, `shadow` a version scored and logged beside the
    live one. What is set replaces serving.traffic / serving.shadow of maquette.yaml for NAME;
    an empty split or "" gives that part back to maquette.yaml; None leaves it as it is.
    Every change is kept in a history."""
    if traffic is not None and not all(math.isfinite(w) and w > 0 for w in traffic.values()):
        raise ModelVersionNotFound(
            f"a traffic weight of {name} is not a positive number: {traffic}.",
            "Give each version a weight above 0 (e.g. v3=0.9 v4=0.1); leave a version out "
            "to send it nothing.",
        )
    for version in [*(traffic or {}), *([shadow] if shadow else [])]:
        publish(settings, f"{name}:{version}")  # each version exists, or a clear error
        resolve(settings, f"{name}:{version}")

    def change(table: dict[str, Any]) -> dict[str, Any]:
        current = table.setdefault("routing", {}).setdefault(name, {})
        if traffic is not None:
            current["traffic"] = dict(traffic)
            if not traffic:  # maquette.yaml's split, if any, applies again
                del current["traffic"]
        if shadow is not None:
            current["shadow"] = shadow
            if not shadow:
                del current["shadow"]
        made = {
            "name": name,
            **current,
            "by": f"{getpass.getuser()}@{socket.gethostname()}",
            "at": datetime.now(UTC).isoformat(),
        }
        table.setdefault("routing_history", []).append(made)
        return made

    return _update_aliases(settings, change)


def routing_table(settings: Settings) -> dict[str, dict[str, Any]]:
    """What `route` set, per model: {"traffic": {version: weight}, "shadow": version|None}."""
    return dict(_read_aliases(settings).get("routing", {}))


def alias_snapshot(settings: Settings) -> str:
    """The alias table and its history as JSON (what a bento carries)."""
    return json.dumps(_read_aliases(settings), indent=2)


def alias_table(settings: Settings) -> dict[str, dict[str, str]]:
    """Every model's aliases: {name: {alias: version}}."""
    return dict(_read_aliases(settings)["aliases"])


def aliases(settings: Settings, name: str) -> dict[str, str]:
    return dict(alias_table(settings).get(name, {}))


def alias_history(settings: Settings, name: str) -> list[dict[str, Any]]:
    return [m for m in _read_aliases(settings)["history"] if m["name"] == name]


def aliases_of(settings: Settings, version: ModelVersion) -> list[str]:
    return sorted(a for a, v in aliases(settings, version.name).items() if v == version.version)


# ------------------------------------------------------------------------------- compare


def compare(settings: Settings, a: str, b: str) -> dict[str, Any]:
    """Test metrics and importances of two versions side by side."""
    left, right = resolve(settings, a), resolve(settings, b)
    metrics_a = left.record.metrics.test.model
    metrics_b = right.record.metrics.test.model
    rows = [
        (k, metrics_a.get(k), metrics_b.get(k))
        for k in metrics_a
        if isinstance(metrics_a.get(k), int | float)
    ]
    features = list(dict.fromkeys([*left.record.importance, *right.record.importance]))
    importance = [
        (f, left.record.importance.get(f), right.record.importance.get(f)) for f in features
    ]
    return {"a": left.tag, "b": right.tag, "metrics": rows, "importance": importance}


# ------------------------------------------------------------------------------- register


def register(
    settings: Settings, version: str, record: VersionRecord, save: Any, write_reports: Any
) -> ModelVersion:
    """Save a version into BentoML's store: models, record.json, reports. All or nothing.

    `save(folder)` writes the learned models and returns {partition: file}; `write_reports(folder,
    record)` writes the HTML. BentoML builds the folder aside and moves it into the store only
    when the block finishes, so a failure leaves nothing half-registered.
    """
    bentoml = bentoml_module(settings)
    name = record.name
    test = record.metrics.test.model
    headline = {k: test[k] for k in ("r2", "rmse", "mae", "auc", "f1") if k in test}
    with bentoml.models.create(
        f"{name}:{version}",
        module="maquette",
        labels={LABEL_KEY: "model", "task": record.task, "algorithm": record.algorithm},
        metadata={
            "feature_service": record.feature_service,
            "trained_by": record.trained_by.user,
            "test": headline,
            "beats_baseline": record.baseline.beats_baseline,
        },
    ) as model:
        folder = Path(model.path)
        record.artifacts = Artifacts(
            models=save(folder), report="report.html", evidently="evidently.html"
        )
        (folder / "record.json").write_text(json.dumps(record.model_dump(mode="json"), indent=2))
        write_reports(folder, record)
    return resolve(settings, f"{name}:{version}")
