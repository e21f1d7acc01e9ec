"""Read plans: what reading a feature service takes, worked out once per service.

A plan groups the service's batch views by entity key (one Redis hash per key holds every view
on that key) with each view's TTL and hash fields, and lists its on-demand views with the
request fields they need. `view_source` gives materialization and the point-in-time join the
same facts about one view's Parquet source.

A view declared without entities (Feast's `FeatureView(entities=[])`, for global features such
as a shop's daily totals) has no join keys here: a request carries no key for it, and Feast
keeps its one row under its dummy entity key (see `redis_layout.entity_key_bytes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from feast import FeatureView, OnDemandFeatureView
from feast.feature_view import DUMMY_ENTITY_ID
from feast.infra.offline_stores.file_source import FileSource
from feast.types import FeastType, UnixTimestamp

from maquette.errors import ConfigError, DataNotLoaded
from maquette.features import redis_layout as wire
from maquette.features.point_in_time import ViewSource

# A feature service name, or "view:feature" references.
Features = str | Sequence[str]
# (view, names of the features read from it), in the service's order.
SelectedViews = list[tuple[FeatureView | OnDemandFeatureView, tuple[str, ...]]]


@dataclass(frozen=True)
class ViewRead:
    """One batch view's part of an online read."""

    name: str
    features: tuple[str, ...]
    ttl_s: float | None
    fields: tuple[bytes, ...]  # feature hash fields followed by "_ts:<view>"


@dataclass(frozen=True)
class KeyGroup:
    """The batch views sharing one entity key: one HMGET of one Redis hash reads them all."""

    join_keys: tuple[str, ...]
    key_types: dict[str, FeastType]
    views: tuple[ViewRead, ...]
    fields: tuple[bytes, ...]


@dataclass(frozen=True)
class OnDemandRead:
    """One on-demand view: the request fields and stored features it turns into outputs."""

    view: OnDemandFeatureView
    request_fields: tuple[str, ...]
    source_features: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ReadPlan:
    """Everything an online read of one feature service needs, in the service's terms."""

    groups: tuple[KeyGroup, ...]
    odfvs: tuple[OnDemandRead, ...]
    request_fields: tuple[str, ...]
    names: tuple[str, ...]
    # The declared type of every join key and request field, to type values sent as text.
    field_types: dict[str, FeastType]

    @property
    def time_fields(self) -> tuple[str, ...]:
        """Request fields declared as timestamps (`UnixTimestamp` in a RequestSource)."""
        return tuple(f for f in self.request_fields if self.field_types.get(f) == UnixTimestamp)

    def request_keys(self, partition_by: str | None = None) -> list[str]:
        """The columns a prediction request carries: join keys, partition key, request fields."""
        keys = [k for g in self.groups for k in g.join_keys]
        if partition_by:
            keys.append(partition_by)
        return list(dict.fromkeys([*keys, *self.request_fields]))


def read_plan_of(selected: SelectedViews) -> ReadPlan:
    """The read plan of (view, features) pairs: batch views grouped by entity key."""
    groups: dict[tuple[str, ...], list[ViewRead]] = {}
    key_types: dict[tuple[str, ...], dict[str, FeastType]] = {}
    odfvs: list[OnDemandRead] = []
    names: list[str] = []
    field_types: dict[str, FeastType] = {}
    for view, feats in selected:
        names += feats
        if isinstance(view, OnDemandFeatureView):
            odfvs.append(_on_demand_read(view))
            field_types.update(request_field_types(view))
            continue
        types = join_key_types(view)
        keys = tuple(sorted(types))
        key_types[keys] = types
        field_types.update(types)
        groups.setdefault(keys, []).append(_view_read(view, feats))
    return ReadPlan(
        tuple(
            KeyGroup(k, key_types[k], tuple(v), tuple(f for r in v for f in r.fields))
            for k, v in groups.items()
        ),
        tuple(odfvs),
        tuple(dict.fromkeys(f for o in odfvs for f in o.request_fields)),
        tuple(names),
        field_types,
    )


def join_key_types(view: FeatureView) -> dict[str, FeastType]:
    """A batch view's join keys and their declared types; none for an entity-less view.

    Feast lists its dummy key `__dummy_id` as an entity column of an entity-less view in some
    registry reads and not in others: it is never a column of the data, so it is left out.
    """
    return {c.name: c.dtype for c in view.entity_columns if c.name != DUMMY_ENTITY_ID}


def _view_read(view: FeatureView, features: tuple[str, ...]) -> ViewRead:
    ttl = view.ttl.total_seconds() if view.ttl and view.ttl > timedelta(0) else None
    fields = (*(wire.field_hash(view.name, f) for f in features), wire.ts_field(view.name))
    return ViewRead(view.name, features, ttl, fields)


def _on_demand_read(view: OnDemandFeatureView) -> OnDemandRead:
    return OnDemandRead(
        view,
        tuple(request_fields(view)),
        tuple(f.name for p in view.source_feature_view_projections.values() for f in p.features),
        tuple(f.name for f in view.features),
    )


def request_fields(odfv: OnDemandFeatureView) -> list[str]:
    """The request fields an on-demand view reads (values sent with the request, not stored)."""
    return [f.name for rs in odfv.source_request_sources.values() for f in rs.schema]


def request_field_types(odfv: OnDemandFeatureView) -> dict[str, FeastType]:
    """The declared type of each request field an on-demand view reads."""
    return {f.name: f.dtype for rs in odfv.source_request_sources.values() for f in rs.schema}


def time_request_fields(odfv: OnDemandFeatureView) -> list[str]:
    """The request fields of an on-demand view declared as timestamps (`UnixTimestamp`)."""
    return [
        f.name
        for rs in odfv.source_request_sources.values()
        for f in rs.schema
        if f.dtype == UnixTimestamp
    ]


def view_source(view: FeatureView, features: Sequence[str]) -> ViewSource:
    """A batch view's Parquet source, join keys and TTL; refused if the file is missing."""
    source = view.batch_source
    if not isinstance(source, FileSource):
        raise ConfigError(
            f"feature view {view.name!r} reads a {type(source).__name__}; Maquette reads "
            "batch views from Parquet files (FileSource).",
            "Give the view a FileSource over the offline store's Parquet file.",
        )
    path = Path(source.path)
    if not path.is_file():
        raise DataNotLoaded(
            f"feature view {view.name!r} reads {path}, which does not exist.",
            "Run `maquette data load` first.",
        )
    ttl = view.ttl if view.ttl and view.ttl > timedelta(0) else None
    return ViewSource(
        view.name,
        path,
        source.timestamp_field,
        source.created_timestamp_column or None,
        tuple(join_key_types(view)),
        tuple(features),
        ttl,
    )
