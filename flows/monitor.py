"""Prefect flow `monitor`: drain the log, join late labels, metrics, Evidently reports, incidents."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from maquette.monitoring import monitor as monitoring
from maquette.platform.flows import flow_settings


def as_task(label: str, fn: Any, *args: Any) -> Any:
    """Each part of the pass is a task; draining is retried (Redis may be restarting)."""
    retries = 3 if label == "drain" else 0
    return task(fn, name=label, cache_policy=NO_CACHE, retries=retries, retry_delay_seconds=5)(
        *args
    )


@flow(name="monitor")
def monitor(
    models: list[str] | None = None, as_of: datetime | None = None
) -> monitoring.MonitorRun:
    """One monitoring pass of the project over `models` (default: every model with a label
    source)."""
    logger = get_run_logger()
    run = monitoring.run(flow_settings(), models, as_of, announce=logger.info, step=as_task)
    for incident in run.incidents_opened:
        logger.warning("incident opened %s: %s", incident.id, incident.message)
    for incident in run.incidents_resolved:
        logger.info("incident resolved %s", incident.id)
    if run.webhook_error:
        logger.warning("%s", run.webhook_error)
    for name, outcome in run.retrained.items():
        logger.info("%s: %s", name, outcome.summary)
    logger.info("monitoring index: %s", run.index)
    return run


if __name__ == "__main__":
    monitor()
