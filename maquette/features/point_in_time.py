"""Point-in-time joins in DuckDB: Feast's historical-retrieval semantics with ASOF joins.

For every entity row and feature view, Feast takes the newest feature row with
`feature_ts <= entity_ts` and, when the view has a TTL, `feature_ts + ttl >= entity_ts`
(ties broken by the created timestamp). An ASOF join finds the newest row in one sorted merge
instead of Feast's join-then-deduplicate, which is where stock retrieval spends its memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maquette.data.sql import duckdb_connection


@dataclass(frozen=True)
class ViewSource:
    """What the join needs to know about one feature view."""

    name: str
    path: Path
    timestamp_field: str
    created_timestamp_field: str | None
    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    ttl: timedelta | None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _view_cte(i: int, view: ViewSource, span: tuple[datetime, datetime] | None) -> str:
    cols = ", ".join([*(_q(k) for k in view.join_keys), *(_q(f) for f in view.features)])
    ts = _q(view.timestamp_field)
    body = f"SELECT {cols}, {ts}::TIMESTAMPTZ AS __ts FROM read_parquet({_lit(view.path)})"
    if span:
        # No entity row can use a feature row newer than the newest entity time, nor (with a
        # TTL) one that expired before the oldest: reading only the rest lets a batch scored in
        # chunks read each chunk's slice of the views, not all of them every time.
        first, last = span
        body += f" WHERE {ts}::TIMESTAMPTZ <= {_time(last)}"
        if view.ttl:
            body += f" AND {ts}::TIMESTAMPTZ >= {_time(first - view.ttl)}"
    if view.created_timestamp_field:
        keys = ", ".join([*(_q(k) for k in view.join_keys), ts])
        body += (
            f" QUALIFY row_number() OVER (PARTITION BY {keys} "
            f"ORDER BY {_q(view.created_timestamp_field)} DESC) = 1"
        )
    return f"v{i} AS ({body})"


def _time(when: datetime) -> str:
    return f"'{when.isoformat()}'::TIMESTAMPTZ"


def point_in_time_sql(
    views: list[ViewSource],
    timestamp_column: str,
    span: tuple[datetime, datetime] | None = None,
) -> str:
    """SQL joining `entities` to every view as of each row's timestamp, TTL applied.

    The result holds `__row` (the entity row's position) and the features, in row order.
    `span`: the oldest and newest entity time, when known (only feature rows that can match
    are read).
    """
    ts = f"e.{_q(timestamp_column)}"
    select = ["e.__row"]
    joins = []
    for i, view in enumerate(views):
        on = " AND ".join(
            [*(f"e.{_q(k)} = v{i}.{_q(k)}" for k in view.join_keys), f"{ts} >= v{i}.__ts"]
        )
        joins.append(f"ASOF LEFT JOIN v{i} ON {on}")
        fresh = (
            f"v{i}.__ts + INTERVAL '{int(view.ttl.total_seconds())} seconds' >= {ts}"
            if view.ttl
            else None
        )
        for feature in view.features:
            col = f"v{i}.{_q(feature)}"
            select.append(
                f"CASE WHEN {fresh} THEN {col} END AS {_q(feature)}"
                if fresh
                else f"{col} AS {_q(feature)}"
            )
    ctes = ", ".join(_view_cte(i, v, span) for i, v in enumerate(views))
    return (
        f"WITH {ctes} SELECT {', '.join(select)} FROM entities e {' '.join(joins)} ORDER BY e.__row"
    )


def point_in_time_join(
    entities: pa.Table,
    views: list[ViewSource],
    timestamp_column: str,
    memory_limit: str = "4GB",
    temp_dir: Path | None = None,
) -> pa.Table:
    """The entity rows in their given order, each with every view's features as of its time."""
    con = duckdb_connection(memory_limit=memory_limit, spill_dir=temp_dir or None)
    # Only keys and the timestamp go through the joins; other entity columns (labels, ids)
    # are attached afterwards in row order, so the sorts behind each ASOF join stay narrow.
    keys = sorted({k for v in views for k in v.join_keys} | {timestamp_column})
    narrow = entities.select(keys).append_column(
        "__row", pa.array(np.arange(entities.num_rows, dtype=np.int64))
    )
    con.register("entities", narrow)
    bounds = pc.min_max(entities[timestamp_column]).as_py()
    span = (bounds["min"], bounds["max"]) if bounds["min"] is not None else None
    features = con.sql(point_in_time_sql(views, timestamp_column, span)).to_arrow_table()
    features = features.drop_columns(["__row"])
    out = entities
    for name in features.column_names:
        out = out.append_column(name, features[name])
    return out


def _between(view: ViewSource, start: datetime, end: datetime) -> str:
    ts = _q(view.timestamp_field)
    return (
        f"{ts} >= '{start.isoformat()}'::TIMESTAMPTZ AND {ts} <= '{end.isoformat()}'::TIMESTAMPTZ"
    )


def scan_sql(view: ViewSource, start: datetime, end: datetime) -> str:
    """Rows of a view with start <= event time <= end (an upper bound of latest_rows_sql)."""
    return f"SELECT 1 FROM read_parquet({_lit(view.path)}) WHERE {_between(view, start, end)}"


def latest_rows_sql(view: ViewSource, start: datetime, end: datetime) -> str:
    """Feast's pull-latest: the newest row per entity with start <= event time <= end (the
    newest row of all for a view without entities)."""
    keys = ", ".join(_q(k) for k in view.join_keys)
    partition = f"PARTITION BY {keys} " if keys else ""
    ts = _q(view.timestamp_field)
    order = f"{ts} DESC" + (
        f", {_q(view.created_timestamp_field)} DESC" if view.created_timestamp_field else ""
    )
    cols = ", ".join([*(_q(k) for k in view.join_keys), *(_q(f) for f in view.features)])
    return (
        f"SELECT {cols}, {ts}::TIMESTAMPTZ AS __ts FROM read_parquet({_lit(view.path)}) "
        f"WHERE {_between(view, start, end)} "
        f"QUALIFY row_number() OVER ({partition}ORDER BY {order}) = 1"
    )


# (rows, first event time, last event time, rows in [start, end], newest event time in it).
TableSpan = tuple[int, datetime | None, datetime | None, int, datetime | None]


def table_span(view: ViewSource, start: datetime | None, end: datetime | None) -> TableSpan:
    """How many rows a view's table holds and over which times, overall and in [start, end]."""
    ts = f"{_q(view.timestamp_field)}::TIMESTAMPTZ"
    inside = _between(view, start, end) if start and end else "true"
    query = (
        f"SELECT count(*), min({ts}), max({ts}), count(*) FILTER ({inside}), "
        f"max({ts}) FILTER ({inside}) FROM read_parquet({_lit(view.path)})"
    )
    rows, first, last, in_range, newest = duckdb_connection().execute(query).fetchall()[0]
    return int(rows), first, last, int(in_range), newest
