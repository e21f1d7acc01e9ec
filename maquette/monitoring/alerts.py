"""What an incident does: start training a candidate version of its model.

When an accuracy or drift incident opens (`incidents.py`) and the model's monitoring says
`retrain_on_alert`, `retrain` starts the platform's `train/<model>` deployment, or trains
inline when no Prefect server runs it. The candidate is promoted only when
`promote_retrained` is set. (The incidents themselves, their store and the webhook are in
`incidents.py`; the checks that find breaches in `verdicts.py`.)
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from maquette import registry
from maquette.config import Settings
from maquette.training import pipeline as training

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun


@dataclass(frozen=True)
class Retraining:
    """What an incident's retraining did: said in one line (`summary`), and what it made, so
    the incident can link to them: the training flow run it started, or the version it trained
    inline."""

    summary: str
    flow_run_id: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return self.summary


# Incidents of these kinds start a retraining (when the model asks for it).
RETRAIN_KINDS = {"accuracy", "drift"}

log = logging.getLogger("maquette.monitoring")


def retrain(settings: Settings, name: str) -> Retraining:
    """Train a candidate of `name` (an incident opened): the deployment if one runs, else inline.

    Returns what happened, for the run summary (with why it trained inline, when it did).
    """
    spec = settings.model_spec(name).monitoring
    alias = settings.serving.default_alias if spec.promote_retrained else None
    started, unavailable = _run_deployment(name, alias)
    if started:
        return started
    version = training.train(settings, name)
    if alias:
        registry.promote(settings, version.tag, alias)
        done = f"trained {version.tag} and promoted it to @{alias}"
    else:
        done = f"trained candidate {version.tag} (not promoted; `maquette models promote "
        done += f"{version.tag}`)"
    return Retraining(f"{done}; inline, as {unavailable}", version=version.tag)


def _run_deployment(name: str, promote: str | None) -> tuple[Retraining | None, str]:
    """Start a run of deployment train/<name>: (what started, ""), or (None, why it cannot).

    Only a missing deployment or an unreachable server lets the caller train inline (logged as
    a warning); any other error of the server or the run raises, so a broken platform is seen.
    """
    deployment = f"train/{name}"
    unset = "no Prefect server is set (PREFECT_API_URL; `maquette up` runs one)"
    if "prefect" not in sys.modules and not os.environ.get("PREFECT_API_URL"):
        return None, unset  # a plain call: not worth the seconds Prefect takes to import
    # Lazy: Prefect takes seconds to import, and only a retraining needs it here.
    import httpx
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:  # no server of the platform's: never start a throwaway one
        return None, unset
    try:
        # A deployment outlives its runner in the server's database: a run created while no
        # runner polls for it (deployments stopped or given up) would wait forever, unseen.
        if not _served(deployment):
            reason = (
                f"no runner serves deployment {deployment} on the Prefect server at {url} "
                "(`maquette up --component deployments` starts it)"
            )
        else:
            started = run_deployment(
                deployment, parameters={"name": name, "promote": promote}, timeout=0
            )
            run = cast("FlowRun", started)  # called from sync code: the run, not a coroutine
            said = f"started training run {run.name} ({run.id}) of deployment {deployment}"
            return Retraining(said, flow_run_id=str(run.id)), ""
    except ObjectNotFound:
        reason = (
            f"the Prefect server at {url} has no deployment {deployment} "
            "(`maquette up` serves it with the deployments component)"
        )
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        reason = f"the Prefect server at {url} is unreachable ({exc})"
    log.warning("retraining %s inline: %s", name, reason)
    return None, reason


def _served(deployment: str) -> bool:
    """Whether a runner polls for this deployment's runs (Prefect marks it READY then)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import DeploymentStatus

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(deployment).status == DeploymentStatus.READY
