"""The Feast feature views a stream processor feeds, and their offline rows merged into Parquet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from maquette.data.sources import TIMESTAMP_TYPE
from maquette.data.sql import sql_identifier as _q
from maquette.data.sql import sql_literal
from maquette.errors import ConfigError, DataNotLoaded
from maquette.features.layer import FeatureLayer
from maquette.stream.aggregations import (
    STAMP_OFFSET_US,
    StreamDefinition,
    WindowAggregation,
    feast_type,
)
from maquette.stream.backfill import write_parquet_durably

if TYPE_CHECKING:
    from feast import FeatureView


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
            _check_key_type(view, agg)
            path = Path(view.batch_source.path)  # type: ignore[union-attr]
            targets.append(Target(agg, view.name, path))
    return targets


def _check_key_type(view: FeatureView, agg: WindowAggregation) -> None:
    """The view's entity types the key as the stream does: Feast's Redis key holds the type, so
    rows written for the int64 7 are never read for the string "7" (nor the reverse)."""
    declared = next((c.dtype for c in view.entity_columns if c.name == agg.key), None)
    if declared is not None and declared != feast_type(agg.key_type):
        raise ConfigError(
            f"feature view {view.name!r} is keyed by {agg.key!r} of type {declared}, but the "
            f"stream declares {agg.key!r} {agg.key_type}.",
            "Give the entity and the stream field one type (ValueType.INT64 with int64, "
            "ValueType.STRING with string), then run `maquette features apply`.",
        )


def merge_rows(
    con: duckdb.DuckDBPyConnection,
    target: Target,
    rows: dict[tuple[str | int, int], dict[str, Any]],
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
