"""The stream's declaration: its events and the window aggregates computed from them.

One `WindowAggregation` per Feast feature view generates both sides of the Lambda architecture:
the backfill SQL (the batch side, DuckDB over historical events) and the streaming computation
(`compute`, over one key's window). A `StreamDefinition` groups them with the event schema; a
project names its definition in `stream.definition` ("module:attribute").

Window semantics, for a key k and an event of k at event time t: the row stamped t + 1 µs holds
the aggregate of k's events with t - window < time <= t. The extra microsecond makes the
point-in-time join (the newest row at or before the prediction time T) see only events strictly
before T. Between events the newest row stands; the views' TTL (one window) nulls it once its
event is a window old.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from maquette.config import Settings
from maquette.data.sources import TIMESTAMP_TYPE
from maquette.data.sql import sql_identifier as _q
from maquette.errors import ConfigError

if TYPE_CHECKING:
    from feast import Field as FeastField

Aggregate = Literal["count", "sum", "mean"]
# A row becomes visible one microsecond after the event it includes (see the docstring).
STAMP_OFFSET_US = 1
_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class WindowAggregation:
    """A sliding-window aggregate of one event value per key, feeding one Feast feature view."""

    view: str
    push_source: str
    key: str
    value: str
    window: timedelta
    features: tuple[tuple[str, Aggregate], ...]

    @property
    def window_us(self) -> int:
        return self.window // _US

    @property
    def feature_names(self) -> list[str]:
        return [name for name, _ in self.features]

    def feast_schema(self) -> list[FeastField]:
        """The feature view's schema: counts are Int64, sums and means Float64."""
        # Imported here: Feast takes seconds to import, and only feature repos call this.
        from feast import Field

        return [Field(name=n, dtype=feast_type(f)) for n, f in self.features]

    def arrow_schema(self) -> pa.Schema:
        """Columns of the offline table: key, event_timestamp, features."""
        return pa.schema(
            [(self.key, pa.string()), ("event_timestamp", TIMESTAMP_TYPE)]
            + [(n, pa.int64() if f == "count" else pa.float64()) for n, f in self.features]
        )

    def compute(self, values: Sequence[float]) -> dict[str, Any]:
        """The features over the values of one window (the streaming side)."""
        # fsum is exactly rounded, so the result does not depend on the order values arrived in.
        count, total = len(values), math.fsum(values)
        out: dict[str, Any] = {}
        for name, fn in self.features:
            out[name] = count if fn == "count" else total if fn == "sum" else total / count
        return out

    def backfill_sql(self, events: str, event_time: str) -> str:
        """DuckDB SQL for every row over the relation `events`, timed by the column `event_time`
        (the batch side)."""
        k, t, v = _q(self.key), _q(event_time), _q(self.value)
        # RANGE frames include both ends; all stored times are whole microseconds, so this
        # frame is exactly t - window < time <= t, as the processor's windows compute it.
        frame = (
            f"PARTITION BY {k} ORDER BY {t} RANGE BETWEEN "
            f"INTERVAL {self.window_us - 1} MICROSECONDS PRECEDING AND CURRENT ROW"
        )
        count, total = f"count({v}) OVER w", f"sum({v}) OVER w"
        exprs = {"count": count, "sum": total, "mean": f"{total} / {count}"}
        select = ", ".join(f"{exprs[fn]} AS {_q(name)}" for name, fn in self.features)
        # Events sharing a key and a time share their frame: DISTINCT keeps one row.
        return (
            f"SELECT DISTINCT {k}, {t} + INTERVAL {STAMP_OFFSET_US} MICROSECOND AS event_timestamp, "
            f"{select} FROM (SELECT {k}::VARCHAR AS {k}, {t}::TIMESTAMPTZ AS {t}, "
            f"{v}::DOUBLE AS {v} FROM ({events})) "
            f"WHERE {k} IS NOT NULL AND {k} <> '' AND {t} IS NOT NULL AND isfinite({v}) "
            f"WINDOW w AS ({frame}) ORDER BY {k}, event_timestamp"
        )


@dataclass(frozen=True)
class StreamDefinition:
    """A stream's events (their fields and event time) and the window aggregates over them.

    Every field of an event is a string on the stream, so any Redis client can publish one.
    The keys, values and event time are required; the other fields are carried along.
    """

    event_time: str
    fields: Mapping[str, str]  # name -> what it holds, for people publishing events
    aggregations: tuple[WindowAggregation, ...]
    # Events sharing an event time are replayed and read in this order, so runs repeat exactly.
    tie_break: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.aggregations:
            raise ConfigError(
                "a stream definition declares no aggregations.",
                "Give StreamDefinition at least one WindowAggregation.",
            )
        undeclared = [n for n in (*self.required_fields, *self.tie_break) if n not in self.fields]
        if undeclared:
            raise ConfigError(
                f"a stream definition uses fields it does not declare: {undeclared}.",
                "Add them to the definition's fields, with a description each.",
            )

    @property
    def keys(self) -> tuple[str, ...]:
        """The aggregations' key fields, each once."""
        return tuple(dict.fromkeys(a.key for a in self.aggregations))

    @property
    def values(self) -> tuple[str, ...]:
        """The aggregated value fields, each once."""
        return tuple(dict.fromkeys(a.value for a in self.aggregations))

    @property
    def required_fields(self) -> tuple[str, ...]:
        """Fields every event must carry: its keys, its time and its values."""
        return (*self.keys, self.event_time, *self.values)

    @property
    def longest_window(self) -> timedelta:
        return max(a.window for a in self.aggregations)


def stream_definition(settings: Settings) -> StreamDefinition:
    """The project's stream definition, imported from `stream.definition` ("module:attribute")."""
    reference = settings.stream.definition
    if not reference:
        raise ConfigError(
            "stream.definition is not set, so the stream has no events or windows.",
            "Set stream.definition in maquette.yaml to 'module:attribute' of a StreamDefinition.",
        )
    module_name, _, attribute = reference.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute or "<missing>")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"stream.definition {reference!r} cannot be loaded: {exc}",
            "Fix stream.definition in maquette.yaml: 'module:attribute', the module importable.",
        ) from exc
    if not isinstance(found, StreamDefinition):
        raise ConfigError(
            f"stream.definition {reference!r} is a {type(found).__name__}, not a StreamDefinition.",
            "Point stream.definition at a StreamDefinition object.",
        )
    return found


def feast_type(kind: str) -> Any:
    """The Feast type of a key ("string") or of an aggregate ("count": Int64; else Float64)."""
    # Imported here: Feast takes seconds to import, and only the writers call this.
    from feast.types import Float64, Int64, String

    return {"string": String, "count": Int64}.get(kind, Float64)
