"""Prefect flow `batch_predict`: entities -> point-in-time features -> a version -> Parquet."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from maquette.config import load_settings
from maquette.serving import batch


@task(cache_policy=NO_CACHE)
def score(
    entities: str | None,
    model: str,
    output: str | None,
    project_dir: str | None,
    output_dir: str | None,
) -> dict[str, object]:
    result = batch.predict_batch(
        load_settings(project_dir),
        entities,
        model,
        Path(output) if output else None,
        output_dir=Path(output_dir) if output_dir else None,
    )
    return {
        "version": result.version,
        "rows": result.rows,
        "rows_per_second": result.rows_per_second,
        "output": str(result.path) if result.path else None,
    }


@flow(name="batch_predict")
def batch_predict(
    entities: str | None,
    model: str,
    output: str | None = None,
    project_dir: str | None = None,
    output_dir: str | None = None,
) -> dict[str, object]:
    """Score `entities` with `model` (NAME@alias); the summary's `output` is the file written.

    `entities`: a Parquet/CSV path or a DuckDB SELECT; None: every row of the model's entity
    source. Written to `output`, or to `<output_dir>/<first>_<last>.parquet` (UTC dates of the
    entities' earliest and latest event time).
    """
    summary = score(entities, model, output, project_dir, output_dir)
    get_run_logger().info(
        "%s: %s rows at %.0f rows/s -> %s",
        summary["version"],
        summary["rows"],
        summary["rows_per_second"],
        summary["output"],
    )
    return summary
