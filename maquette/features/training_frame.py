"""Training frames: point-in-time correct features for entity rows, on-demand views included.

Batch views are joined as of each row's time with DuckDB ASOF joins (see `point_in_time`), with
the same values as Feast's `get_historical_features`, TTL included; on-demand views are then
computed with Feast's own transformation, once per distinct input row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import FeatureView, OnDemandFeatureView
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


def point_in_time_frame(
    settings: Settings,
    selected: SelectedViews,
    entities: pd.DataFrame | pa.Table,
    timestamp_column: str = "event_timestamp",
) -> pa.Table:
    """Point-in-time correct features of the selected views for every entity row, in row order."""
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
    con = duckdb_connection()
    con.register("rows_in", table.select(inputs))
    distinct = con.sql("SELECT DISTINCT * FROM rows_in").to_arrow_table()
    out = odfv.transform_arrow(distinct)
    names = [f.name for f in odfv.features]
    types = [feast_value_type_to_pa(f.dtype.to_value_type()) for f in odfv.features]
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
