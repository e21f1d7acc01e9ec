"""The stream's declaration: its events and the window aggregates computed from them.

One `WindowAggregation` per Feast feature view generates both sides of the Lambda architecture:
the backfill SQL (the batch side, DuckDB over historical events) and the streaming computation
(`compute`, over one key's window). A `StreamDefinition` groups them with the event schema. A
project declares it in `maquette.yaml` (`stream.events` and `stream.aggregations`) or in Python,
named by `stream.definition` ("module:attribute"); both give the same `StreamDefinition`.

Window semantics, for a key k and an event of k at event time t: the row stamped t + 1 µs holds
the aggregate of k's events with t - window < time <= t. The extra microsecond makes the
point-in-time join (the newest row at or before the prediction time T) see only events strictly
before T. Between events the newest row stands; the views' TTL (one window) nulls it once its
event is a window old.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

import pyarrow as pa

from maquette.config import Settings
from maquette.data.sources import TIMESTAMP_TYPE
from maquette.data.sql import sql_identifier as _q
from maquette.data_settings import StreamAggregationSettings, StreamFieldType, StreamSettings
from maquette.errors import ConfigError

if TYPE_CHECKING:
    from feast import Field as FeastField

Aggregate = Literal["count", "sum", "mean", "min", "max"]
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
# Keys are looked up in Feast by value, so their type is part of the Redis key: string or int64.
KeyType = Literal["string", "int64"]
KEY_TYPES: tuple[str, ...] = get_args(KeyType)
VALUE_TYPES = ("float64", "int64")
# A row becomes visible one microsecond after the event it includes (see the docstring).
STAMP_OFFSET_US = 1
_US = timedelta(microseconds=1)
# What an int64 key's text must look like, on the stream and in the backfill alike, so both
# sides keep and drop the same events ("7.0", "1e3" and "0x10" are not keys; DuckDB's cast
# alone would take them, and Python's int() takes non-ASCII digits).
INT_KEY_TEXT = r"[+-]?[0-9]+"
_INT_KEY = re.compile(INT_KEY_TEXT, re.ASCII)


def int_key(text: str) -> int | None:
    """An int64 key's text as an integer; None when it is not one (the processor dead-letters
    it, the backfill drops it)."""
    stripped = text.strip()
    return int(stripped) if _INT_KEY.fullmatch(stripped) else None


def int_key_sql(column: str) -> str:
    """DuckDB expression: `column` (an SQL identifier) as BIGINT when its text is an integer
    by `int_key`'s rule, else NULL."""
    text = f"trim({column}::VARCHAR)"
    return (
        f"CASE WHEN regexp_full_match({text}, '{INT_KEY_TEXT}') THEN TRY_CAST({text} AS BIGINT) END"
    )


@dataclass(frozen=True)
class WindowAggregation:
    """A sliding-window aggregate of one event value per key, feeding one Feast feature view."""

    view: str
    push_source: str
    key: str
    value: str
    window: timedelta
    features: tuple[tuple[str, Aggregate], ...]
    key_type: KeyType = "string"

    def __post_init__(self) -> None:
        if unknown := [f"{n}: {f}" for n, f in self.features if f not in AGGREGATES]:
            raise ConfigError(
                f"aggregation {self.view!r} names unknown aggregates {unknown}.",
                f"Use one of {', '.join(AGGREGATES)}.",
            )
        if self.key_type not in KEY_TYPES:
            raise ConfigError(
                f"aggregation {self.view!r} has key type {self.key_type!r}.",
                "Keys are string or int64.",
            )
        if self.window <= timedelta(0) or not self.features:
            raise ConfigError(
                f"aggregation {self.view!r} needs a positive window and at least one feature.",
                "Give it a window such as 1h and features such as {n: count}.",
            )

    @property
    def window_us(self) -> int:
        return self.window // _US

    def key_of(self, raw: Any) -> str | int:
        """A key as the processor, Redis and Parquet hold it: int for int64 keys, else text."""
        return int(raw) if self.key_type == "int64" else str(raw)

    @property
    def feature_names(self) -> list[str]:
        return [name for name, _ in self.features]

    def feast_schema(self) -> list[FeastField]:
        """The feature view's schema: counts are Int64; sums, means, minima, maxima Float64."""
        # Imported here: Feast takes seconds to import, and only feature repos call this.
        from feast import Field

        return [Field(name=n, dtype=feast_type(f)) for n, f in self.features]

    def arrow_schema(self) -> pa.Schema:
        """Columns of the offline table: key, event_timestamp, features."""
        return pa.schema(
            [(self.key, key_arrow_type(self.key_type)), ("event_timestamp", TIMESTAMP_TYPE)]
            + [(n, pa.int64() if f == "count" else pa.float64()) for n, f in self.features]
        )

    def compute(self, values: Sequence[float]) -> dict[str, Any]:
        """The features over the values of one window (the streaming side)."""
        return {name: _COMPUTE[fn](values) for name, fn in self.features}

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
        exprs = {
            "count": count,
            "sum": total,
            "mean": f"{total} / {count}",
            "min": f"min({v}) OVER w",
            "max": f"max({v}) OVER w",
        }
        select = ", ".join(f"{exprs[fn]} AS {_q(name)}" for name, fn in self.features)
        # An int64 key stays an integer (Feast keys Redis by its type); text that is not one is
        # dropped, as the processor dead-letters it.
        if self.key_type == "int64":
            key, key_ok = int_key_sql(k), f"{k} IS NOT NULL"
        else:
            key, key_ok = f"{k}::VARCHAR", f"{k} IS NOT NULL AND {k} <> ''"
        # Events sharing a key and a time share their frame: DISTINCT keeps one row. Values
        # beyond ±2^53 are dropped, as the processor dead-letters them (events.MAX_ABS_VALUE).
        return (
            f"SELECT DISTINCT {k}, {t} + INTERVAL {STAMP_OFFSET_US} MICROSECOND AS event_timestamp, "
            f"{select} FROM (SELECT {key} AS {k}, {t}::TIMESTAMPTZ AS {t}, "
            f"{v}::DOUBLE AS {v} FROM ({events})) "
            f"WHERE {key_ok} AND {t} IS NOT NULL AND isfinite({v}) AND abs({v}) <= {2**53} "
            f"WINDOW w AS ({frame}) ORDER BY {k}, event_timestamp"
        )


# The streaming side of each aggregate, over one window's values (never empty: the event that
# opened the row is in it). fsum is exactly rounded, so sums do not depend on arrival order.
_COMPUTE: dict[str, Callable[[Sequence[float]], Any]] = {
    "count": len,
    "sum": math.fsum,
    "mean": lambda values: math.fsum(values) / len(values),
    "min": min,
    "max": max,
}


@dataclass(frozen=True)
class StreamDefinition:
    """A stream's events (their fields and event time) and the window aggregates over them.

    Every field of an event is a string on the stream, so any Redis client can publish one.
    The keys, values and event time are required; the other fields are carried along. `types`
    may give each field's type (string, int64, float64, timestamp); a key's type must then
    agree with its aggregations' `key_type`.
    """

    event_time: str
    fields: Mapping[str, str]  # name -> what it holds, for people publishing events
    aggregations: tuple[WindowAggregation, ...]
    # Events sharing an event time are replayed and read in this order, so runs repeat exactly.
    tie_break: tuple[str, ...] = ()
    types: Mapping[str, StreamFieldType] = field(default_factory=dict)

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
        for agg in self.aggregations:
            declared = self.types.get(agg.key, agg.key_type)
            if declared != agg.key_type or self.key_types[agg.key] != agg.key_type:
                raise ConfigError(
                    f"key {agg.key!r} of aggregation {agg.view!r} is {agg.key_type}, but the "
                    f"definition types it {declared} (or another aggregation does).",
                    "Give the key one type everywhere: string or int64.",
                )
            if self.types.get(agg.value, "float64") not in VALUE_TYPES:
                raise ConfigError(
                    f"value {agg.value!r} of aggregation {agg.view!r} is a "
                    f"{self.types[agg.value]} field.",
                    "Aggregate a float64 or int64 field.",
                )

    @property
    def keys(self) -> tuple[str, ...]:
        """The aggregations' key fields, each once."""
        return tuple(dict.fromkeys(a.key for a in self.aggregations))

    @property
    def key_types(self) -> dict[str, KeyType]:
        """Each key field's type (the first aggregation using it says)."""
        out: dict[str, KeyType] = {}
        for agg in self.aggregations:
            out.setdefault(agg.key, agg.key_type)
        return out

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

    def aggregation(self, view: str) -> WindowAggregation:
        """The aggregation feeding the feature view `view`; an unknown name lists the known."""
        for agg in self.aggregations:
            if agg.view == view:
                return agg
        known = ", ".join(a.view for a in self.aggregations)
        raise ConfigError(
            f"the stream declares no aggregation named {view!r}.",
            f"Declared: {known}. Add it under stream.aggregations, or fix the name.",
        )


def stream_definition(settings: Settings) -> StreamDefinition:
    """The project's stream definition: declared in maquette.yaml (`stream.events` and
    `stream.aggregations`) or imported from `stream.definition` ("module:attribute")."""
    conf = settings.stream
    declared = conf.events is not None or bool(conf.aggregations)
    if conf.definition and declared:
        raise ConfigError(
            "both stream.definition and stream.events/stream.aggregations are set.",
            "Keep one: remove stream.definition to use the YAML declaration, or remove "
            "stream.events and stream.aggregations to use the Python StreamDefinition.",
        )
    if declared:
        return declared_definition(conf)
    reference = conf.definition
    if not reference:
        raise ConfigError(
            "stream.definition is not set and no stream is declared, so the stream has no events "
            "or windows.",
            "Declare stream.events and stream.aggregations in maquette.yaml (README 'Speed "
            "layer'), or set stream.definition to 'module:attribute' of a StreamDefinition.",
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


def declared_definition(conf: StreamSettings) -> StreamDefinition:
    """The StreamDefinition that `stream.events` and `stream.aggregations` declare."""
    events = conf.events
    if events is None or not conf.aggregations:
        missing = "stream.events" if events is None else "stream.aggregations"
        raise ConfigError(
            f"{missing} is not set: a declared stream needs its events and its aggregations.",
            "Set both stream.events (time, fields) and stream.aggregations in maquette.yaml.",
        )
    types: dict[str, StreamFieldType] = {}
    fields: dict[str, str] = {}
    for name, spec in events.fields.items():
        if isinstance(spec, str):
            types[name], fields[name] = spec, spec
        else:
            types[name], fields[name] = spec.type, spec.description or spec.type
    _check_field(types, events.time, "stream.events.time", ("timestamp",))
    for name in events.tie_break:
        _check_field(types, name, "stream.events.tie_break", tuple(get_args(StreamFieldType)))
    aggregations = tuple(
        _declared_aggregation(view, spec, types) for view, spec in conf.aggregations.items()
    )
    return StreamDefinition(
        event_time=events.time,
        fields=fields,
        aggregations=aggregations,
        tie_break=tuple(events.tie_break),
        types=types,
    )


def _declared_aggregation(
    view: str, spec: StreamAggregationSettings, types: Mapping[str, StreamFieldType]
) -> WindowAggregation:
    path = f"stream.aggregations.{view}"
    _check_field(types, spec.key, f"{path}.key", KEY_TYPES)
    _check_field(types, spec.value, f"{path}.value", VALUE_TYPES)
    features = []
    for name, aggregate in spec.features.items():
        if aggregate not in AGGREGATES:
            raise ConfigError(
                f"{path}.features.{name} is {aggregate!r}, not an aggregate.",
                f"Write one of {', '.join(AGGREGATES)}, e.g. {name}: mean.",
            )
        features.append((name, aggregate))
    if not features:
        raise ConfigError(
            f"{path}.features is empty.", f"Name at least one feature, e.g. {{{view}_n: count}}."
        )
    return WindowAggregation(
        view=view,
        push_source=spec.push_source or f"{view}_push",
        key=spec.key,
        value=spec.value,
        window=window_length(spec.window, f"{path}.window"),
        features=tuple(features),  # type: ignore[arg-type]  # checked against AGGREGATES above
        key_type=types[spec.key],  # type: ignore[arg-type]  # checked against KEY_TYPES above
    )


def _check_field(
    types: Mapping[str, StreamFieldType], name: str, path: str, allowed: tuple[str, ...]
) -> None:
    """`name` is a declared event field of one of the `allowed` types, or a ConfigError."""
    if name not in types:
        raise ConfigError(
            f"{path} is {name!r}, which stream.events.fields does not declare "
            f"(declared: {', '.join(types) or 'none'}).",
            f"Declare it under stream.events.fields (e.g. {name}: {allowed[0]}) or fix {path}.",
        )
    if types[name] not in allowed:
        raise ConfigError(
            f"{path} is {name!r}, a {types[name]} field.",
            f"{path} must be a {' or '.join(allowed)} field: change its declared type or the name.",
        )


_WINDOW_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_length(value: str | float, path: str = "window") -> timedelta:
    """A window written as 90s, 15m, 1h, 1d or a number of seconds, as a timedelta."""
    if isinstance(value, str) and (match := _WINDOW_TEXT.match(value)):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2] or "s"]  # "3600": seconds
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        seconds = -1.0
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(
            f"{path} is {value!r}, not a window length.",
            f"Write a positive length such as 90s, 15m, 1h or 1d (or seconds, e.g. 3600) in {path}.",
        )
    return timedelta(seconds=seconds)


def key_arrow_type(kind: str) -> pa.DataType:
    """The Arrow type of a key column: int64 keys stay integers, others are text."""
    return pa.int64() if kind == "int64" else pa.string()


def feast_type(kind: str) -> Any:
    """The Feast type of a key ("string", "int64") or of an aggregate ("count": Int64; else
    Float64)."""
    # Imported here: Feast takes seconds to import, and only the writers call this.
    from feast.types import Float64, Int64, String

    return {"string": String, "int64": Int64, "count": Int64}.get(kind, Float64)
