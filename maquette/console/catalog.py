"""The feature catalog page: Feast's registry (views, entities, features, services), which model
versions use each feature, each view's freshness in Redis against its TTL, and the stream
processor's figures."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from maquette.config import Settings
from maquette.errors import MaquetteError
from maquette.features.layer import FeatureLayer
from maquette.monitoring.freshness import Freshness, freshness, is_streamed
from maquette.registry import ModelVersion
from maquette.stream import operations as stream_operations


@dataclass
class FeatureRow:
    name: str
    dtype: str
    description: str
    tags: dict[str, str]
    services: list[str]
    versions: list[str]  # NAME:VERSION of the registered versions trained on it


@dataclass
class ViewRow:
    name: str
    kind: str  # batch | stream | on demand
    entities: list[str]
    ttl: str
    description: str
    tags: dict[str, str]
    owner: str
    features: list[FeatureRow]
    fresh: Freshness | None = None
    inputs: list[str] = field(default_factory=list)  # on demand: the views and request fields


@dataclass
class StreamFigures:
    """The speed layer as `maquette stream status` shows it, with a rate between two reads."""

    status: stream_operations.StreamStatus | None
    error: str = ""
    events_per_s: float | None = None
    dead_letters: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Catalog:
    views: list[ViewRow]
    entities: list[dict[str, Any]]
    services: dict[str, list[str]]  # service -> "view:feature"
    stream: StreamFigures | None
    freshness_error: str = ""


def _ttl(seconds: float | None) -> str:
    if not seconds:
        return "none"
    days, rest = divmod(int(seconds), 86400)
    return f"{days}d" if not rest else f"{seconds / 3600:g}h"


class CatalogReader:
    """Reads the catalog; keeps the last stream counter to turn totals into a rate."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._last_events: tuple[float, int] | None = None
        self._lock = threading.Lock()  # pages are answered in several threads

    def read(self, versions: list[ModelVersion]) -> Catalog:
        layer = FeatureLayer(self.settings)
        store = layer.store
        project = self.settings.feast.project
        services = {
            s.name: [f"{p.name}:{f.name}" for p in s.feature_view_projections for f in p.features]
            for s in store.registry.list_feature_services(project, allow_cache=True)
        }
        used: dict[str, list[str]] = {}
        for version in versions:
            for ref in version.record.features:
                used.setdefault(f"{ref.view}:{ref.name}", []).append(version.tag)
        try:
            fresh = {f.view: f for f in freshness(self.settings, layer=layer)}
            fresh_error = ""
        except MaquetteError as exc:  # Redis down: the catalog still shows
            fresh, fresh_error = {}, f"{exc.message} {exc.remedy}"
        views = [
            self._view(v, "stream" if is_streamed(v) else "batch", services, used, fresh)
            for v in layer.feature_views()
        ]
        for odfv in store.list_on_demand_feature_views(allow_cache=True):
            row = self._view(odfv, "on demand", services, used, {})
            row.inputs = [p.name for p in odfv.source_feature_view_projections.values()]
            row.inputs += [f"request: {s.name}" for s in odfv.source_request_sources.values()]
            views.append(row)
        entities = [
            {
                "name": e.name,
                "join_key": e.join_key,
                "type": str(e.value_type.name) if e.value_type is not None else "",
                "description": e.description,
            }
            for e in store.list_entities(allow_cache=True)
        ]
        return Catalog(
            sorted(views, key=lambda v: v.name),
            entities,
            services,
            self._stream(),
            fresh_error,
        )

    def _view(
        self,
        view: Any,
        kind: str,
        services: dict[str, list[str]],
        used: dict[str, list[str]],
        fresh: dict[str, Freshness],
    ) -> ViewRow:
        features = [
            FeatureRow(
                f.name,
                str(f.dtype),
                f.description,
                dict(f.tags),
                [s for s, refs in services.items() if f"{view.name}:{f.name}" in refs],
                used.get(f"{view.name}:{f.name}", []),
            )
            for f in view.features
        ]
        ttl = view.ttl.total_seconds() if getattr(view, "ttl", None) else None
        return ViewRow(
            view.name,
            kind,
            # Feast names an entity-less view's entity "__dummy": not one of the user's.
            [e for e in getattr(view, "entities", []) or [] if e != "__dummy"],
            _ttl(ttl) if kind != "on demand" else "-",
            view.description,
            dict(view.tags),
            view.owner,
            features,
            fresh.get(view.name),
        )

    def _stream(self) -> StreamFigures | None:
        conf = self.settings.stream
        if conf.definition is None and conf.events is None:  # no speed layer declared
            return None
        try:
            found = stream_operations.status(self.settings)
            dead = stream_operations.dead_letters(self.settings, 10)
        except MaquetteError as exc:
            return StreamFigures(None, f"{exc.message} {exc.remedy}")
        with self._lock:
            now, rate = time.monotonic(), None
            last = self._last_events
            if last is not None and now > last[0]:
                rate = max(0.0, (found.events - last[1]) / (now - last[0]))
            self._last_events = (now, found.events)
        return StreamFigures(found, "", rate, dead)


def age(seconds: float | None) -> str:
    """An age for people: 42 s, 3.5 h, 12 days."""
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"
