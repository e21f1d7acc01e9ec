"""Helpers for a project's `feature_repo/`: its settings, its tables' sources, its stream views.

A feature repo declares Feast objects; what Maquette already knows (where the offline tables
are, which aggregations the stream computes) it takes from here rather than repeating it:

    from maquette.feast_repo import project_settings, table_source, stream_view

    settings = project_settings(__file__)            # the maquette.yaml at or above this file
    item_source = table_source(settings, "item")     # FileSource over the feature table "item"
    item_last_hour = stream_view(settings, "item_last_hour", entities=[item])

`stream_view` builds the Feast view of one declared stream aggregation (`stream.aggregations`
in maquette.yaml, or a Python `stream.definition`): its schema, its TTL (the window) and its
push source, whose batch source is the view's offline table. The processor, the backfill and
Feast then share one declaration. Nothing here does I/O beyond reading maquette.yaml.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from maquette.config import SETTINGS_FILE, Settings, load_settings
from maquette.data.sources import feature_table_path
from maquette.errors import ConfigError
from maquette.stream.aggregations import WindowAggregation, stream_definition

if TYPE_CHECKING:
    from feast import Entity, FeatureView, FileSource


def project_settings(file: str | Path) -> Settings:
    """The settings of the project holding `file`: the maquette.yaml at or above its folder."""
    start = Path(file).resolve()
    for folder in (start.parent, *start.parent.parents):
        if (folder / SETTINGS_FILE).is_file():
            return load_settings(folder)
    raise ConfigError(
        f"no {SETTINGS_FILE} at or above {start.parent}.",
        "Keep the feature repo inside the project folder (`maquette init DIR` makes one).",
    )


def table_source(settings: Settings, table: str) -> FileSource:
    """A FileSource over the offline table `table` (`maquette data load` writes it), timed by
    its event_timestamp column."""
    # Imported here: Feast takes seconds to import, and only feature repos call this.
    from feast import FileSource

    return FileSource(
        name=f"{table}_source",
        path=str(feature_table_path(settings, table)),
        timestamp_field="event_timestamp",
    )


def stream_view(
    settings: Settings,
    view: str,
    entities: list[Entity],
    ttl: timedelta | None = None,
    description: str = "",
) -> FeatureView:
    """The Feast feature view of the stream aggregation `view`: its features, a TTL of one
    window unless given, and the push source "<view>_push" (or the declared one) over the
    view's offline table."""
    from feast import FeatureView, PushSource

    agg = stream_definition(settings).aggregation(view)
    _check_entities(agg, entities)
    push = PushSource(name=agg.push_source, batch_source=table_source(settings, agg.view))
    return FeatureView(
        name=agg.view,
        entities=entities,
        ttl=agg.window if ttl is None else ttl,
        schema=agg.feast_schema(),
        source=push,
        description=description,
    )


def _check_entities(agg: WindowAggregation, entities: list[Entity]) -> None:
    """The view's entities key it by the aggregation's key, typed alike (Feast's Redis key holds
    the type: a string "7" and an int64 7 are different rows)."""
    from feast import ValueType

    found = [e for e in entities if e.join_key == agg.key]
    if not found:
        raise ConfigError(
            f"stream view {agg.view!r} is keyed by {agg.key!r}, but none of its entities "
            f"({', '.join(e.name for e in entities) or 'none'}) has that join key.",
            f"Pass an Entity with join_keys=[{agg.key!r}] in entities=.",
        )
    want = ValueType.INT64 if agg.key_type == "int64" else ValueType.STRING
    have = found[0].value_type
    if have not in (want, ValueType.UNKNOWN):
        raise ConfigError(
            f"entity {found[0].name!r} types {agg.key!r} as {have.name}, but the stream "
            f"declares it {agg.key_type}.",
            f"Declare the entity with value_type=ValueType.{want.name}, or the field as "
            f"{'string' if have == ValueType.STRING else 'int64'} in stream.events.fields.",
        )
