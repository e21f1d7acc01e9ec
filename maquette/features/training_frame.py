"""Training frames: point-in-time correct features for entity rows, on-demand views included.

Batch views are joined as of each row's time with DuckDB ASOF joins (see `point_in_time`), with
the same values as Feast's `get_historical_features`, TTL included; on-demand views are then
computed with Feast's own transformation, once per distinct input row.

A python-mode on-demand view gets its inputs as Python lists, as Feast gives them; Maquette
builds those lists itself for UTC timestamps (`python_columns`), because pyarrow's `to_pydict`
spends ~6 us per timezone-aware timestamp (most of a training frame's on-demand time). The
values are equal, tzinfo included (tests/test_training_frame_inputs.py).
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import FeatureView, OnDemandFeatureView
from feast.transformation.python_transformation import PythonTransformation
from feast.type_map import feast_value_type_to_pa

from maquette.config import Settings
from maquette.data.sql import duckdb_connection
from maquette.errors import InvalidEntityFrame
from maquette.features.point_in_time import point_in_time_join
from maquette.features.read_plan import (
    SelectedViews,
    join_key_types,
    request_fields,
    view_source,
)
from maquette.features.spark_engine import spark_join, uses_spark


def point_in_time_frame(
    settings: Settings,
    selected: SelectedViews,
    entities: pd.DataFrame | pa.Table,
    timestamp_column: str = "event_timestamp",
) -> pa.Table:
    """Point-in-time correct features of the selected views for every entity row, in row order
    (joined by DuckDB, or by Spark on `feast.offline_engine: spark`)."""
    table = (
        entities
        if isinstance(entities, pa.Table)
        else pa.Table.from_pandas(entities, preserve_index=False)
    )
    batch_views = [(v, fs) for v, fs in selected if isinstance(v, FeatureView)]
    odfvs = [v for v, _ in selected if isinstance(v, OnDemandFeatureView)]
    needed = {k for v, _ in batch_views for k in join_key_types(v)}
    needed |= {f for o in odfvs for f in request_fields(o)}
    _check_entities(table, needed, timestamp_column)
    table = table.set_column(
        table.schema.get_field_index(timestamp_column),
        timestamp_column,
        table[timestamp_column].cast(pa.timestamp("us", tz="UTC")),
    )
    sources = [view_source(v, fs) for v, fs in batch_views]
    if uses_spark(settings) and sources:
        features = spark_join(settings, table, sources, timestamp_column)
        joined = table
        for name in features.column_names:
            joined = joined.append_column(name, features[name])
    else:
        joined = point_in_time_join(
            table,
            sources,
            timestamp_column,
            settings.feast.duckdb_memory_limit,
            settings.state_dir / "duckdb_tmp",
        )
    for odfv in odfvs:
        joined = _append_on_demand(odfv, joined)
    return joined


def _append_on_demand(odfv: OnDemandFeatureView, table: pa.Table) -> pa.Table:
    """Append an on-demand view's outputs, computing them once per distinct input row.

    The transformation is Feast's own (`transform_arrow`); an on-demand view is a pure function
    of its inputs, so repeated inputs (rows sharing a request time) need no second call.
    """
    inputs = list(
        dict.fromkeys(
            request_fields(odfv)
            + [f.name for p in odfv.source_feature_view_projections.values() for f in p.features]
        )
    )
    names = [f.name for f in odfv.features]
    types = [feast_value_type_to_pa(f.dtype.to_value_type()) for f in odfv.features]
    if table.num_rows == 0:  # nothing to compute: a transformation need not accept no rows
        for name, dtype in zip(names, types, strict=True):
            table = table.append_column(name, pa.array([], dtype))
        return table
    con = duckdb_connection()
    con.register("rows_in", table.select(inputs))
    distinct = con.sql("SELECT DISTINCT * FROM rows_in").to_arrow_table()
    out = _transform(odfv, distinct)
    outputs = distinct.select(inputs)
    for name, dtype in zip(names, types, strict=True):
        outputs = outputs.append_column(f"__out_{name}", out[name].cast(dtype))
    con.register("outputs", outputs)
    con.register(
        "rows",
        table.select(inputs).append_column(
            "__row", pa.array(np.arange(table.num_rows, dtype=np.int64))
        ),
    )
    match = " AND ".join(f'r."{c}" IS NOT DISTINCT FROM o."{c}"' for c in inputs)
    cols = ", ".join(f'o."__out_{n}" AS "{n}"' for n in names)
    result = con.sql(
        f"SELECT {cols} FROM rows r LEFT JOIN outputs o ON {match} ORDER BY r.__row"
    ).to_arrow_table()
    for name in names:
        table = table.append_column(name, result[name])
    return table


def _transform(odfv: OnDemandFeatureView, table: pa.Table) -> pa.Table:
    """Feast's `transform_arrow`; for a python-mode view, with the inputs made Python lists by
    `python_columns` instead of pyarrow's `to_pydict` (same values, faster)."""
    transformation = odfv.feature_transformation
    prepare = getattr(odfv, "_preprocess_arrow_table", None)
    finish = getattr(odfv, "_postprocess_arrow_table", None)
    if not isinstance(transformation, PythonTransformation) or not (prepare and finish):
        return odfv.transform_arrow(table)
    prepared, cleanup = prepare(table)
    out = pa.Table.from_pydict(transformation.udf(python_columns(prepared)))
    result: pa.Table = finish(out, cleanup, False)
    return result


_UTC = ZoneInfo("UTC")  # the tzinfo pyarrow gives a value of timestamp[..., tz=UTC]
_NUMPY_UNITS = {"s", "ms", "us"}  # nanoseconds become pandas Timestamps in pyarrow


def python_columns(table: pa.Table) -> dict[str, list[Any]]:
    """`table.to_pydict()`, with UTC timestamp columns converted through numpy."""
    out: dict[str, list[Any]] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        dtype = column.type
        if (
            pa.types.is_timestamp(dtype)
            and dtype.tz in ("UTC", "utc")
            and dtype.unit in _NUMPY_UNITS
        ):
            out[name] = _utc_datetimes(column, dtype.unit)
        else:
            out[name] = column.to_pylist()
    return out


def _utc_datetimes(column: pa.ChunkedArray, unit: str) -> list[Any]:
    ticks = column.cast(pa.int64()).fill_null(0).to_numpy()
    naive = ticks.astype(f"datetime64[{unit}]").astype(object)
    values: list[Any] = [t.replace(tzinfo=_UTC) for t in naive]
    if column.null_count:
        for i in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
            values[i] = None
    return values


def _check_entities(table: pa.Table, needed: set[str], timestamp_column: str) -> None:
    missing = sorted(needed - set(table.column_names))
    if missing:
        raise InvalidEntityFrame(
            f"the entity frame lacks column(s) {missing}.",
            f"It has {table.column_names}; add the missing keys.",
        )
    if timestamp_column not in table.column_names:
        raise InvalidEntityFrame(
            f"the entity frame has no timestamp column {timestamp_column!r}.",
            "Add the event time of each row, or pass timestamp_column=...",
        )
    dtype = table.schema.field(timestamp_column).type
    if not pa.types.is_timestamp(dtype) or dtype.tz is None:
        raise InvalidEntityFrame(
            f"column {timestamp_column!r} is {dtype}, not a timezone-aware timestamp.",
            "Convert it, e.g. pd.to_datetime(col, utc=True).",
        )
