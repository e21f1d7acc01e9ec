"""What each console page shows, read from the Python API (registry, platform, incidents).

The page functions return plain data (dicts, dataclasses) that the templates lay out; nothing
here knows about HTTP. Anything slow to ask (Prefect's schedules) is cached for a few seconds,
so a page answers in milliseconds on a running platform.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from maquette import registry
from maquette.config import Settings
from maquette.errors import ModelVersionNotFound
from maquette.monitoring import incidents
from maquette.platform import components, schedules
from maquette.platform.flows import prefect_api_url
from maquette.registry import ModelVersion

T = TypeVar("T")
SCHEDULES_TTL_S = 10.0


class NotFound(Exception):
    """A page for something that does not exist: the 404 page lists what does."""

    def __init__(self, message: str, known: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.message = message
        self.known = known  # (label, link) of what exists instead


class _Cached:
    """One value recomputed at most every `ttl_s` seconds (a page must not wait on Prefect)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._at = -1e9
        self._value: Any = None
        self._lock = threading.Lock()

    def get(self, compute: Callable[[], T]) -> T:
        with self._lock:
            if time.monotonic() - self._at > self.ttl_s:
                self._value, self._at = compute(), time.monotonic()
            value: T = self._value
            return value


@dataclass
class Links:
    """The platform's other UIs, and how to open those that are not running."""

    prefect: str
    swagger: str
    evidently: str  # the command that starts it
    feast: str  # the command that starts it
    feast_url: str  # where `feast ui` serves by default


@dataclass
class ModelSummary:
    """One line of the models page."""

    name: str
    task: str
    versions: list[ModelVersion]
    aliases: dict[str, str]
    latest: ModelVersion  # the served version (the default alias's), else the newest

    def version(self, number: str) -> ModelVersion:
        """One of its versions, or NotFound listing them."""
        for candidate in self.versions:
            if candidate.version == number:
                return candidate
        known = [(v.tag, f"/models/{self.name}/{v.version}") for v in self.versions]
        raise NotFound(f"Model {self.name!r} has no version {number!r}.", known)


@dataclass
class Console:
    """The data behind the pages of one project's console."""

    settings: Settings
    _schedules: _Cached = field(default_factory=lambda: _Cached(SCHEDULES_TTL_S))

    # ------------------------------------------------------------------ home

    def links(self) -> Links:
        s = self.settings
        workspace = s.path(s.monitoring.workspace)
        return Links(
            prefect=prefect_api_url(s).removesuffix("/api"),
            swagger=f"http://{s.serving.host}:{s.serving.port}/docs",
            evidently=f"evidently ui --workspace {workspace}",
            feast=f"cd {s.path(s.paths.feature_repo)} && feast ui",
            feast_url="http://127.0.0.1:8888",
        )

    def components(self) -> list[components.ComponentStatus]:
        return components.status(self.settings)

    def schedules(self) -> list[schedules.DeploymentSchedule]:
        return self._schedules.get(lambda: schedules.deployment_schedules(self.settings))

    def alerts(self, limit: int | None = None) -> list[incidents.Incident]:
        """Open incidents first, then the newest resolved ones."""
        found = incidents.load(self.settings)
        ordered = [i for i in reversed(found) if i.status == "open"]
        ordered += [i for i in reversed(found) if i.status != "open"]
        return ordered[:limit] if limit is not None else ordered

    # ------------------------------------------------------------------ models

    def models(self) -> list[ModelSummary]:
        by_name: dict[str, list[ModelVersion]] = {}
        for version in registry.list_versions(self.settings):
            by_name.setdefault(version.name, []).append(version)
        table = registry.alias_table(self.settings)
        out = []
        for name, versions in sorted(by_name.items()):
            aliases = table.get(name, {})
            served = aliases.get(self.settings.serving.default_alias)
            latest = next((v for v in versions if v.version == served), versions[-1])
            out.append(ModelSummary(name, latest.record.task, versions, aliases, latest))
        return out

    def model(self, name: str) -> ModelSummary:
        found = self.models()
        for summary in found:
            if summary.name == name:
                return summary
        known = [(m.name, f"/models/{m.name}") for m in found]
        raise NotFound(f"No model named {name!r} is registered.", known)

    def version(self, name: str, version: str) -> ModelVersion:
        return self.model(name).version(version)

    def tagged(self, tag: str) -> ModelVersion:
        """NAME:VERSION as a version, or NotFound listing what exists."""
        name, _, number = tag.partition(":")
        if not number:
            versions = [v for m in self.models() for v in m.versions]
            known = [(v.tag, f"/models/{v.name}/{v.version}") for v in versions]
            raise NotFound(f"{tag!r} is not NAME:VERSION.", known)
        return self.version(name, number)

    def alias_history(self, name: str) -> list[dict[str, Any]]:
        return list(reversed(registry.alias_history(self.settings, name)))

    def rollbacks(self, name: str) -> dict[str, str]:
        """Per alias, the version it pointed to before its last move (if it still points where
        that move put it): what "roll back" moves it to."""
        current = registry.aliases(self.settings, name)
        found: dict[str, str] = {}
        seen: set[str] = set()
        for move in self.alias_history(name):  # newest first
            alias = move["alias"]
            if alias in seen:
                continue
            seen.add(alias)
            if move["previous"] and current.get(alias) == move["version"]:
                found[alias] = move["previous"]
        return found

    def promote(self, name: str, version: str, alias: str) -> dict[str, Any]:
        """Move NAME@alias to a version, as `maquette models promote` does (same history)."""
        try:
            return registry.promote(self.settings, f"{name}:{version}", alias)
        except ModelVersionNotFound as exc:
            raise ValueError(f"{exc.message} {exc.remedy}") from exc
