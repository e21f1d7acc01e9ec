"""The Feast feature views a stream processor feeds, and their offline rows merged into Parquet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from maquette.data.sources import TIMESTAMP_TYPE
from maquette.data.sql import sql_identifier as _q
from maquette.data.sql import sql_literal
from maquette.errors import DataNotLoaded
from maquette.features.layer import FeatureLayer
from maquette.stream.aggregations import STAMP_OFFSET_US, StreamDefinition, WindowAggregation
from maquette.stream.backfill import write_parquet_durably


@dataclass(frozen=True)
class Target:
    """A Feast feature view fed by an aggregation's push source."""

    agg: WindowAggregation
    view: str
    batch_path: Path


def resolve_targets(layer: FeatureLayer, definition: StreamDefinition) -> list[Target]:
    """Every feature view each aggregation feeds, checked against its features."""
    # Feast's push semantics: a push goes to every feature view whose source is the push source.
    views = layer.store.list_feature_views(allow_cache=False)
    targets = []
    for agg in definition.aggregations:
        fed = [v for v in views if v.stream_source and v.stream_source.name == agg.push_source]
        if not fed:
            raise DataNotLoaded(
                f"no feature view is fed by the push source {agg.push_source!r}.",
                "Declare it in feature_repo/ and run `maquette features apply`.",
            )
        for view in fed:
            known = {f.name for f in view.features}
            if missing := [n for n in agg.feature_names if n not in known]:
                raise DataNotLoaded(
                    f"feature view {view.name!r} lacks {missing}.",
                    "Align feature_repo/ with stream.definition and run `maquette features apply`.",
                )
            path = Path(view.batch_source.path)  # type: ignore[union-attr]
            targets.append(Target(agg, view.name, path))
    return targets


def merge_rows(
    con: duckdb.DuckDBPyConnection, target: Target, rows: dict[tuple[str, int], dict[str, Any]]
) -> None:
    """Rows replace those with the same key and timestamp in the view's Parquet file."""
    agg = target.agg
    ordered = sorted(rows.items())
    columns: dict[str, Any] = {
        agg.key: [k for (k, _), _ in ordered],
        "event_timestamp": pa.array([t + STAMP_OFFSET_US for (_, t), _ in ordered]).cast(
            TIMESTAMP_TYPE
        ),
    }
    for name in agg.feature_names:
        columns[name] = [values[name] for _, values in ordered]
    con.register("new_rows", pa.table(columns, schema=agg.arrow_schema()))
    sql = "SELECT * FROM new_rows"
    if target.batch_path.is_file():
        k = _q(agg.key)
        sql += (
            f" UNION ALL SELECT o.* FROM read_parquet({sql_literal(target.batch_path)}) o "
            f"ANTI JOIN new_rows n ON o.{k} = n.{k} AND o.event_timestamp = n.event_timestamp"
        )
    # No ORDER BY: sorting the whole file on every commit would cost more than the merge;
    # readers (the ASOF join, materialize) sort by key and time themselves.
    write_parquet_durably(con, sql, target.batch_path)
    con.unregister("new_rows")
