"""Prefect flow `materialize`: move new feature rows from the offline store into Redis."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, task

from maquette.data.redis_server import ensure_redis
from maquette.features.layer import FeatureLayer
from maquette.platform.flows import flow_settings


@task(retries=2, retry_delay_seconds=5)
def materialize_views(end: datetime, views: list[str] | None) -> dict[str, int]:
    """Rows written per feature view; retried because Redis may be restarting."""
    settings = flow_settings()
    ensure_redis(settings)
    layer = FeatureLayer(settings)
    if views:
        start = datetime(1970, 1, 1, tzinfo=UTC)
        return layer.materialize(start, end, views).rows_written
    return layer.materialize_incremental(end).rows_written


@flow(name="materialize", log_prints=True)
def materialize(end: datetime | None = None, views: list[str] | None = None) -> dict[str, int]:
    """Incremental materialization up to `end` (default: now), or all history of `views`."""
    written = materialize_views(end or datetime.now(UTC), views)
    print(f"rows written per feature view: {written}")
    return written


if __name__ == "__main__":
    materialize()
