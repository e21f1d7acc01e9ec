"""Prefect deployments for every flow of the project, built from the settings, served together.

`<paths.flows>/deployments.py --project DIR` calls `serve_deployments`; `maquette up` runs that
script as the `deployments` component (with PREFECT_API_URL pointing at the platform's Prefect
server). Deployment names, for `run_deployment("FLOW/DEPLOYMENT")`, with the schedule each
takes from `orchestration.schedules.<flow>` (a cron; null: deployed, run on demand only):

    materialize/incremental      new feature rows -> Redis, up to now
    drain/prediction-log         the prediction log's Redis Stream -> Parquet
    monitor/models               monitoring of every declared model
    batch_predict/<model>        `orchestration.batch_entities` scored by <model>@<default alias>
                                 into <batch_output>/<model>/<run date>.parquet
    train/<model>                a new version of <model> (also started by monitoring alerts)

Each flow comes from the project's flows folder (`platform.flows`); a flow whose file is missing
is skipped with a warning in the log, and so is batch_predict without `batch_entities`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

# Prefect at module level: only the deployments' runner imports this module, and it needs
# Prefect from its first line.
from prefect import flow

from maquette.config import Settings, load_settings
from maquette.platform.flows import FLOW_NAMES, flow_file, project_flow
from maquette.platform.schedules import held_schedules

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

log = logging.getLogger("maquette.deployments")


@flow(name="batch_predict")
def dated_batch_predict(
    model: str, entities: str, output_dir: str, project_dir: str | None = None
) -> dict[str, object]:
    """`batch_predict` into <output_dir>/<date the run was scheduled for>.parquet."""
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time or datetime.now(UTC)
    output = Path(output_dir) / f"{when:%Y-%m-%d}.parquet"
    inner = project_flow(load_settings(project_dir), "batch_predict")
    return dict(inner.fn(entities, model, str(output), project_dir))


def _schedules(settings: Settings, name: str) -> list[Any]:
    from prefect.schedules import Cron

    cron = getattr(settings.orchestration.schedules, name)
    return [Cron(cron, timezone=settings.orchestration.timezone)] if cron else []


def _parameters(settings: Settings) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Per flow: (deployment name, parameters) of each of its deployments."""
    project = str(settings.project_dir)
    alias = settings.serving.default_alias
    batch_dir = settings.path(settings.orchestration.batch_output)
    entities = settings.orchestration.batch_entities
    return {
        "materialize": [("incremental", {"project_dir": project})],
        "drain": [("prediction-log", {"project_dir": project})],
        "monitor": [("models", {"project_dir": project})],
        "batch_predict": [
            (
                model,
                {
                    "model": f"{model}@{alias}",
                    "entities": entities,
                    "output_dir": str(batch_dir / model),
                    "project_dir": project,
                },
            )
            for model in settings.models
            if entities is not None
        ],
        "train": [(model, {"name": model, "project_dir": project}) for model in settings.models],
    }


def flow_deployments(settings: Settings) -> list[RunnerDeployment]:
    """One deployment per flow (per model for batch_predict and train), schedules from settings."""
    wanted = _parameters(settings)
    if settings.orchestration.batch_entities is None and settings.models:
        log.warning(
            "orchestration.batch_entities is not set: no batch_predict deployments (set it to a "
            "DuckDB SELECT or a Parquet path of the entities to score daily)"
        )
    built: list[RunnerDeployment] = []
    held = held_schedules(settings)  # e.g. by the demo: created paused, resumed when released
    for name in FLOW_NAMES:
        if flow_file(settings, name) is None:
            where = settings.path(settings.paths.flows) / f"{name}.py"
            log.warning("%s not found: its deployments are skipped", where)
            continue
        runnable = dated_batch_predict if name == "batch_predict" else project_flow(settings, name)
        for deployment_name, parameters in wanted[name]:
            deployment = runnable.to_deployment(
                deployment_name,
                schedules=_schedules(settings, name),
                parameters=parameters,
                tags=["maquette"],
                paused=f"{name}/{deployment_name}" in held,
            )
            built.append(cast("RunnerDeployment", deployment))  # sync call: not a coroutine
    return built


def serve_deployments(settings: Settings) -> None:
    """Create or update the deployments on the Prefect server and run their flow runs (blocks)."""
    from prefect import serve

    # A runner that stops leaves the schedules active: runs due while it is down show as late.
    serve(
        *flow_deployments(settings),
        limit=settings.orchestration.run_limit,
        pause_on_shutdown=False,
        webserver=True,
    )
