"""Prefect flow `batch_predict`: entities -> point-in-time features -> a version -> Parquet."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from maquette.config import load_settings
from maquette.serving import batch


@task(cache_policy=NO_CACHE)
def score(entities: str, model: str, output: str, project_dir: str | None) -> dict[str, object]:
    result = batch.predict_batch(load_settings(project_dir), entities, model, Path(output))
    return {
        "version": result.version,
        "rows": result.rows,
        "rows_per_second": result.rows_per_second,
        "output": str(result.path),
    }


@flow(name="batch_predict")
def batch_predict(
    entities: str, model: str, output: str, project_dir: str | None = None
) -> dict[str, object]:
    """Score `entities` (Parquet/CSV path or DuckDB SELECT) with `model` (NAME@alias) into `output`."""
    summary = score(entities, model, output, project_dir)
    get_run_logger().info(
        "%s: %s rows at %.0f rows/s -> %s",
        summary["version"],
        summary["rows"],
        summary["rows_per_second"],
        summary["output"],
    )
    return summary
