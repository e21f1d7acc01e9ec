"""`maquette bench offline-engine`: training frames and materialization's reads on DuckDB and on
Spark (`feast.offline_engine`), same entities, same run; next to them, on samples, the stock
engines: Feast's Spark store's own join and Feast's Ray store.

Cases:
- the training frame of the default feature service for every entity row (336,776 flights on
  the demo): DuckDB (Maquette's ASOF join), then Spark on this machine (`local[*]`: Maquette's
  as-of join; the JVM's start timed apart), compared with DuckDB's frame value for value;
- the same on 20,000 rows, with Feast's Spark store's `get_historical_features` (quadratic on
  a key of few values: the full frame ran out of Spark's 4 GB), and on 2,000 rows with Feast's
  Ray store (a Ray started for it), their batch features compared with DuckDB's;
- materialization's reads: the newest row per entity of every batch view over its whole
  history, by DuckDB and by Feast's Spark pull-latest (the Redis writes after are one code).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureView
from rich.console import Console

from maquette.bench.dataset import bench_dataset
from maquette.bench.features import entities_file
from maquette.bench.harness import bench_dir, results_table
from maquette.config import Settings
from maquette.data.sql import duckdb_connection
from maquette.features.layer import FeatureLayer, repo_config
from maquette.features.point_in_time import latest_rows_sql
from maquette.features.read_plan import view_source
from maquette.features.spark_engine import (
    quiet,
    spark_latest_rows,
    spark_repo_config,
    spark_rows,
    spark_session,
    spark_view,
)

HEADERS = (
    "case",
    "rows",
    "DuckDB",
    "Spark",
    "Spark vs DuckDB",
    "stock engine, same rows",
    "Spark's values vs DuckDB's",
)
STOCK_SAMPLE = 20_000  # Feast's Spark join is quadratic on a key of few values
RAY_SAMPLE = 2_000  # Feast's Ray store took 160 s for 2,000 rows
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _on(settings: Settings, engine: str) -> Settings:
    values = settings.model_dump()
    values["feast"] |= {"offline_engine": engine}
    return Settings.model_validate(values)


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - began, out


def _differing_cells(reference: pa.Table, other: pa.Table) -> int:
    """Cells where `other` differs from `reference` (nulls equal), over reference's columns."""
    if reference.num_rows != other.num_rows:  # every cell counts as different
        return int(reference.num_rows) * int(reference.num_columns)
    ours, theirs = reference.to_pandas(), other.to_pandas()
    cells = 0
    for name in reference.column_names:
        if name not in theirs:
            cells += len(ours)
            continue
        a, b = ours[name], theirs[name]
        cells += int((~((a == b) | (a.isna() & b.isna()))).sum())
    return cells


def _values(cells: int) -> str:
    return "equal" if cells == 0 else f"{cells:,} cells differ"


def run_offline_engine_benchmark(settings: Settings, console: Console) -> str:
    """Prints the table and returns it as Markdown."""
    entities_path, count = entities_file(settings, bench_dataset(settings))
    entities = pq.read_table(entities_path)
    duck, spark = FeatureLayer(_on(settings, "duckdb")), FeatureLayer(_on(settings, "spark"))
    rows = []
    console.print("[bold]offline engines[/]: DuckDB vs Spark (Maquette's join, Feast's store)")
    jvm_s, _ = _timed(spark_session, spark.settings)
    console.print(f"  Spark's session started in {jvm_s:.1f} s")
    # Spark's first jobs pay for its code loading: a small frame first, not timed.
    spark.training_frame(entities.slice(0, 100))

    console.print(f"  training frame, {count:,} rows ...")
    duck_s, frame = _timed(duck.training_frame, entities)
    spark_s, on_spark = _timed(spark.training_frame, entities)
    cells = _differing_cells(frame, on_spark)
    rows.append(_row("training frame", count, duck_s, spark_s, "-", cells))

    for size in (STOCK_SAMPLE, RAY_SAMPLE):
        sample = entities.take(list(range(0, count, max(1, count // size)))[:size])
        console.print(f"  training frame, {sample.num_rows:,} rows ...")
        duck_s, frame = _timed(duck.training_frame, sample)
        spark_s, on_spark = _timed(spark.training_frame, sample)
        stock, stock_frame = (
            _feast_spark_frame(spark, sample) if size == STOCK_SAMPLE else _ray_frame(duck, sample)
        )
        batch = [
            c
            for c in frame.column_names
            if c in stock_frame.column_names and c not in sample.column_names
        ]
        if stock_frame.num_rows == sample.num_rows:
            stock_values = _values(_differing_cells(frame.select(batch), stock_frame.select(batch)))
        else:  # Feast's Ray store drops entity rows sharing keys and time
            stock_values = f"{stock_frame.num_rows:,} of {sample.num_rows:,} rows returned"
        rows.append(
            _row(
                "training frame",
                sample.num_rows,
                duck_s,
                spark_s,
                f"{stock}: {_seconds(stock_frame)} ({stock_values})",
                _differing_cells(frame, on_spark),
            )
        )

    console.print("  materialization's reads, every batch view's whole history ...")
    duck_s = spark_s = 0.0
    read = differ = 0
    for view in duck.feature_views():
        source = view_source(view, [f.name for f in view.features])
        now = datetime.now(UTC)
        sql = latest_rows_sql(source, EPOCH, now)
        seconds, newest = _timed(duckdb_connection().sql(sql).to_arrow_table)
        duck_s += seconds
        seconds, on_spark = _timed(spark_latest_rows, spark.settings, source, EPOCH, now)
        spark_s += seconds
        read += newest.num_rows
        keys = [(k, "ascending") for k in source.join_keys]
        differ += _differing_cells(newest.sort_by(keys), on_spark.sort_by(keys))
    rows.append(
        _row(
            "newest row per entity, every view (Feast's Spark pull-latest)",
            read,
            duck_s,
            spark_s,
            "-",
            differ,
        )
    )
    title = (
        f"offline engines, same run, Spark on {settings.feast.spark_master} "
        f"(its JVM start: {jvm_s:.1f} s, not in the times)"
    )
    return results_table(console, title, HEADERS, rows) + "\n"


def _seconds(frame: pa.Table) -> str:
    return f"{frame.schema.metadata[b'seconds'].decode()} s"


def _row(
    case: str, count: int, duck_s: float, spark_s: float, stock: str, cells: int
) -> tuple[str, ...]:
    return (
        case,
        f"{count:,}",
        f"{duck_s:.2f} s",
        f"{spark_s:.2f} s",
        f"{spark_s / duck_s:.1f}x slower" if duck_s else "-",
        stock,
        _values(cells),
    )


def _with_seconds(frame: pa.Table, seconds: float) -> pa.Table:
    return frame.replace_schema_metadata({"seconds": f"{seconds:.1f}"})


def _feast_spark_frame(layer: FeatureLayer, sample: pa.Table) -> tuple[str, pa.Table]:
    """Feast's Spark store's own join (`get_historical_features`) of the batch views."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStore

    views = [
        (view, view_source(view, features))
        for view, features in layer.views_for(layer.settings.default_feature_service())
        if isinstance(view, FeatureView)
    ]
    keys = sorted({k for _, s in views for k in s.join_keys})
    narrow = sample.select([*keys, "event_timestamp"]).append_column(
        "__row", pa.array(range(sample.num_rows), pa.int64())
    )
    session = spark_session(layer.settings)
    began = time.perf_counter()
    with quiet():
        job = SparkOfflineStore.get_historical_features(
            config=spark_repo_config(layer.settings),
            feature_views=[spark_view(view, source) for view, source in views],
            feature_refs=[f"{v.name}:{f}" for v, s in views for f in s.features],
            entity_df=session.createDataFrame(narrow),
            registry=layer.store.registry,
            project=layer.settings.feast.project,
        )
        frame = spark_rows(job).sort_by("__row")
    seconds = time.perf_counter() - began
    return "Feast's Spark store", _with_seconds(frame, seconds)


def _ray_frame(layer: FeatureLayer, sample: pa.Table) -> tuple[str, pa.Table]:
    """Feast's Ray store's training frame of the batch views (its rows back in sample order)."""
    import ray
    from feast import FeatureStore, RepoConfig

    config = repo_config(layer.settings).model_dump(by_alias=True)
    storage = Path(bench_dir(layer.settings)) / "ray_store"
    config["offline_store"] = {
        "type": "ray",
        "storage_path": str(storage),
        "ray_conf": {"include_dashboard": False},
    }
    refs = [
        f"{view.name}:{f}"
        for view, features in layer.views_for(layer.settings.default_feature_service())
        if isinstance(view, FeatureView)
        for f in features
    ]
    entities = sample.append_column("__row", pa.array(range(sample.num_rows), pa.int64()))
    try:
        store = FeatureStore(config=RepoConfig(**config))
        began = time.perf_counter()
        frame = store.get_historical_features(
            entity_df=entities.to_pandas(), features=refs
        ).to_arrow()
        seconds = time.perf_counter() - began
    finally:
        ray.shutdown()
    return "Feast's Ray store (incl. Ray's start)", _with_seconds(frame.sort_by("__row"), seconds)
