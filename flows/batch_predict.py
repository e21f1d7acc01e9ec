"""Prefect flow `batch_predict`: the settings' entities -> point-in-time features -> a version -> Parquet."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from maquette.platform.flows import flow_settings
from maquette.serving import batch


@task(cache_policy=NO_CACHE)
def score(model: str) -> dict[str, object]:
    result = batch.scheduled_batch(flow_settings(), model)
    return {
        "version": result.version,
        "rows": result.rows,
        "rows_per_second": result.rows_per_second,
        "output": str(result.path) if result.path else None,
    }


@flow(name="batch_predict")
def batch_predict(model: str) -> dict[str, object]:
    """Score `orchestration.batch_entities` (null: the model's entity source) with `model`
    (a declared NAME, or NAME@alias / NAME:VERSION of one) into
    `<orchestration.batch_output>/<NAME>/<first>_<last>.parquet`; the summary's `output` is
    the file written. Entities and folders come from the settings, never from a parameter."""
    summary = score(model)
    get_run_logger().info(
        "%s: %s rows at %.0f rows/s -> %s",
        summary["version"],
        summary["rows"],
        summary["rows_per_second"],
        summary["output"],
    )
    return summary
