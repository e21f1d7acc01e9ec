"""Prefect flow `drain`: move logged predictions from the Redis Stream into Parquet."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from maquette.platform.flows import flow_settings
from maquette.serving import prediction_log as predictions


@task(retries=3, retry_delay_seconds=5, cache_policy=NO_CACHE)
def drain_stream() -> int:
    """Entries moved; retried because Redis may be restarting (nothing is acked unwritten)."""
    result = predictions.drain(flow_settings())
    if result.busy:  # another drain held the log: this run moved nothing, and says why
        get_run_logger().warning(result.busy)
    return result.entries


@flow(name="drain")
def drain() -> int:
    """Drain the project's prediction log once."""
    moved = drain_stream()
    get_run_logger().info("drained %d predictions", moved)
    return moved


if __name__ == "__main__":
    drain()
