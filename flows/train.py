"""Prefect flow `train`: one training run, each step a Prefect task (the search retried once)."""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from maquette import registry
from maquette.platform.flows import flow_settings
from maquette.training import pipeline as training


def as_task(label: str, fn: Any, *args: Any) -> Any:
    """Run a training step as a task. Inputs are large frames: no input hashing or caching."""
    retries = 1 if label == "search" else 0
    return task(fn, name=label, cache_policy=NO_CACHE, retries=retries, retry_delay_seconds=2)(
        *args
    )


@flow(name="train")
def train(name: str, trials: int | None = None, promote: str | None = None) -> str:
    """Train model `name` as declared in maquette.yaml; returns the registered NAME:VERSION.

    `promote` names an alias to move to the new version (used by alert-triggered retraining
    when the model's settings allow it).
    """
    settings = flow_settings()
    logger = get_run_logger()
    version = training.train(settings, name, trials, announce=logger.info, step=as_task)
    logger.info("registered %s: %s", version.tag, version.record.baseline.gain)
    if promote:
        registry.promote(settings, version.tag, promote)
        logger.info("promoted %s to @%s", version.tag, promote)
    return str(version.tag)


if __name__ == "__main__":
    # `python flows/train.py [MODEL]` from a project folder: the first declared model by default.
    train(sys.argv[1] if len(sys.argv) > 1 else next(iter(flow_settings().models)))
