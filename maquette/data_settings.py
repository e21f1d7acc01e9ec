"""The project's data as settings: its source tables (and how their times are written) and its
stream of events with the windows computed over it.

Part of the settings object (`maquette.config.Settings.dataset` and `.stream`); kept apart
because these sections describe the user's data, not where Maquette runs.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from maquette.model_spec import Section, as_utc
from maquette.window_spec import DurationText

# How a source writes its event time: numbers since the epoch in a unit, or ISO 8601 text.
TimestampUnit = Literal["s", "ms", "us", "ns", "iso"]


class SourceTimestampSettings(Section):
    """A source's event-time column and how it is written; loading makes it UTC."""

    column: str = Field(description="The column holding each row's event time.")
    unit: TimestampUnit | None = Field(
        None,
        description="s, ms, us or ns: numbers since 1970-01-01 UTC; iso: ISO 8601 text (naive "
        "values are UTC unless zone is set); null: times that already carry a zone.",
    )
    zone: str | None = Field(
        None,
        description="IANA time zone (e.g. America/Chicago) of the source's naive local "
        "wall-clock times: the declared column's (unless its unit is an epoch unit, which is "
        "UTC by definition) and any other time column written without a zone.",
    )

    @field_validator("zone")
    @classmethod
    def _known_zone(cls, zone: str | None) -> str | None:
        if zone is not None:
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {zone!r}: write an IANA name such as "
                    "America/Chicago, Europe/Paris or UTC"
                ) from None
        return zone


class SourceSettings(Section):
    """One source table: its file and, optionally, how its event time is written."""

    path: Path = Field(description="Parquet or CSV file (relative to the project folder).")
    timestamp: SourceTimestampSettings | None = Field(
        None,
        description="The event-time column and its unit or zone; loading converts it to UTC "
        "and copies it to event_timestamp. Null: the file already holds UTC-aware times.",
    )


class DatasetSettings(Section):
    """The data loaded into the offline store by `maquette data load`."""

    module: str | None = Field(
        None,
        description="Python module with source_tables() and FEATURE_TABLES (SQL by table name); "
        "null: use sources and feature_sql.",
    )
    sources: dict[str, SourceSettings] = Field(
        default_factory=dict,
        description="Source tables by name: a Parquet/CSV path, or {path, timestamp: {column, "
        "unit | zone}}.",
    )
    feature_sql: Path | None = Field(
        None, description="Folder of <feature_table>.sql files run by DuckDB over the sources."
    )
    entity_source: str | None = Field(
        None,
        description="Source table holding entities, event times and labels (a model's own "
        "entity_source wins).",
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _plain_paths_are_sources(cls, sources: Any) -> Any:
        # `name: data/x.csv` stays the short form of `name: {path: data/x.csv}`.
        if isinstance(sources, dict):
            return {
                name: {"path": spec} if isinstance(spec, str | Path) else spec
                for name, spec in sources.items()
            }
        return sources


# The types an event field may be declared with (maquette/stream/aggregations.py reads them).
StreamFieldType = Literal["string", "int64", "float64", "timestamp"]


class StreamFieldSettings(Section):
    """One event field with a description: `NAME: {type: TYPE, description: TEXT}`."""

    type: StreamFieldType = Field(description="string, int64, float64 or timestamp.")
    description: str = Field("", description="What the field holds, for people publishing.")


class StreamEventSettings(Section):
    """The events on the stream: their fields and which one is the event time."""

    time: str = Field(description="The event-time field (ISO 8601 with a zone on the stream).")
    fields: dict[str, StreamFieldType | StreamFieldSettings] = Field(
        description="NAME: TYPE or NAME: {type: TYPE, description: TEXT}; TYPE is string, "
        "int64, float64 or timestamp."
    )
    tie_break: list[str] = Field(
        default_factory=list, description="Fields ordering events that share an event time."
    )


class StreamAggregationSettings(Section):
    """A sliding-window aggregate of one event value per key: one Feast feature view."""

    key: str = Field(description="The key field (a declared string or int64 field).")
    value: str = Field(description="The aggregated field (a declared float64 or int64 field).")
    window: str | float = Field(
        description="Window length: 90s, 15m, 1h, 1d, or a number of seconds."
    )
    features: dict[str, str] = Field(
        description="Feature name -> aggregate: count, sum, mean, min or max."
    )
    push_source: str | None = Field(
        None, description="The Feast push source the view is fed by; null: '<view>_push'."
    )


class StreamSettings(Section):
    """The speed layer: events on a Redis Stream, windowed aggregates pushed to Feast."""

    # Exactly one of `definition` (Python) or `events` + `aggregations` (YAML) declares them.
    definition: str | None = Field(
        None,
        description="The stream's events and windows: 'module:attribute' of a StreamDefinition "
        "(or declare events and aggregations instead).",
    )
    events: StreamEventSettings | None = Field(
        None, description="The events' fields and event time (with aggregations; no definition)."
    )
    aggregations: dict[str, StreamAggregationSettings] = Field(
        default_factory=dict,
        description="Window aggregates by Feast feature view name (with events; no definition).",
    )
    stream: str = Field(
        "maquette:events",
        description="Redis Stream of the events. On a Redis Cluster a name without a hash tag "
        "gets one ({maquette:events}), shared with its state and dead letters.",
    )
    dead_letter: str = Field(
        "maquette:events:dead",
        description="Stream of rejected events, each with its reason. On a cluster it must "
        "hash like the stream: <stream>:dead gets the stream's tag ({maquette:events}:dead).",
    )
    group: str = Field("speed-layer", description="Consumer group of the stream processor.")
    consumer: str = Field("processor-1", description="Consumer name (pending entries are its own).")
    allowed_lateness_s: float = Field(
        600.0,
        ge=0,
        description="Events this far behind the newest event time still update their windows.",
    )
    max_event_ahead: DurationText = Field(
        "1h",
        description="Events whose time is further than this ahead of the processor's clock "
        "(the wall clock; a replay's simulated clock in a replay) are dead-lettered: one event "
        "from the year 9999 would otherwise make every later event late.",
    )
    batch: int = Field(2_000, ge=1, description="Entries read per XREADGROUP.")
    block_ms: int = Field(50, ge=1, description="How long one read waits for new entries.")
    commit_interval_s: float = Field(
        5.0,
        gt=0,
        description="Offline rows, processor state and XACK are committed this often.",
    )
    max_len: int = Field(
        5_000_000, ge=1, description="Approximate cap on the event stream's length (XADD MAXLEN)."
    )
    trim_acknowledged: bool = Field(
        True,
        description="After each commit, remove from the event stream the entries every consumer "
        "group has acknowledged (they live on in the offline rows); false: keep them up to "
        "max_len.",
    )
    events_source: str | None = Field(
        None,
        description="Offline table of historical events (backfill, replay); null: none.",
    )
    backfill_before: datetime | None = Field(
        None,
        description="The batch backfill covers events before this; the stream covers the rest.",
    )

    @field_validator("backfill_before", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        return None if value is None else as_utc(value)
