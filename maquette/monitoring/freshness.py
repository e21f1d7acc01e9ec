"""Freshness: how old the newest value of every feature view in the online store is.

A view whose newest value is older than its TTL (or that has no value at all) is stale: the
service answers its features as missing, so materialization is late. A stale view is a
breaching `freshness` verdict at the pass (`verdicts.freshness_verdicts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from feast import FeatureView

from maquette.config import Settings
from maquette.data.redis_server import unreachable
from maquette.features import redis_layout as wire
from maquette.features.layer import FeatureLayer
from maquette.features.redis_cluster import CLUSTER_DOWN


@dataclass
class Freshness:
    """The newest event time of a feature view in the online store, against its TTL."""

    view: str
    ttl_s: float | None
    newest: datetime | None
    age_s: float | None
    stale: bool
    features: list[str] = field(default_factory=list)  # what a stale view serves as missing
    note: str = ""  # why a view older than its TTL is not stale (a streamed view, caught up)


def freshness(
    settings: Settings, as_of: datetime | None = None, layer: FeatureLayer | None = None
) -> list[Freshness]:
    """Per feature view: newest `_ts` stored in Redis, its age at `as_of` (default now), stale?"""
    layer = layer or FeatureLayer(settings)
    now = as_of or datetime.now(UTC)
    views = layer.feature_views()
    out = []
    behind: bool | None = None  # whether the stream processor has events left to apply
    for view, seconds in zip(views, _newest_seconds(settings, layer, views), strict=True):
        ttl = view.ttl.total_seconds() if view.ttl else None  # a zero TTL means no limit
        when = datetime.fromtimestamp(seconds, UTC) if seconds is not None else None
        age = (now - when).total_seconds() if when else None
        stale = when is None or (ttl is not None and age is not None and age > ttl)
        features = [f.name for f in view.features]
        note = ""
        if stale and is_streamed(view):
            # A streamed view gets a value only when an event comes: a quiet hour (a night
            # without departures) leaves it older than its TTL with nothing late. It is late
            # only while the processor has events it has not applied.
            behind = _processor_behind(settings) if behind is None else behind
            if not behind:
                stale = False
                note = "no events within its TTL; the stream processor has applied every event"
        out.append(Freshness(view.name, ttl, when, age, stale, features, note))
    return out


def is_streamed(view: FeatureView) -> bool:
    """Fed by the stream processor (a push source), not by materialization."""
    from feast.data_source import PushSource

    return isinstance(view.stream_source, PushSource) or isinstance(view.batch_source, PushSource)


def _processor_behind(settings: Settings) -> bool:
    """Whether the project's event stream holds events the processor has not applied."""
    from maquette.errors import MaquetteError
    from maquette.stream.operations import status

    try:
        found = status(settings)
    except MaquetteError:  # no stream to read: judge the view by its values alone
        return True
    return bool(found.pending) or bool(found.undelivered)


def _newest_seconds(
    settings: Settings, layer: FeatureLayer, views: list[FeatureView]
) -> list[float | None]:
    """Per view, the newest event time (epoch seconds) over every entity hash in Redis."""
    fields = [wire.ts_field(v.name) for v in views]
    newest: list[float | None] = [None] * len(views)
    pattern = b"*" + settings.feast.project.encode()
    try:
        client = layer.redis
        keys = list(client.scan_iter(match=pattern, count=5000, _type="HASH"))
        for start in range(0, len(keys), 5000):
            pipe = client.pipeline(transaction=False)
            for key in keys[start : start + 5000]:
                pipe.hmget(key, fields)
            for reply in pipe.execute():
                for i, raw in enumerate(reply):
                    seconds = wire.decode_timestamp_seconds(raw)
                    best = newest[i]
                    if seconds is not None and (best is None or seconds > best):
                        newest[i] = seconds
    except (redis.ConnectionError, redis.TimeoutError, *CLUSTER_DOWN) as exc:
        raise unreachable(settings, exc) from exc
    return newest
