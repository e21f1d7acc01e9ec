"""Prefect deployments for every flow of the project, built from the settings, served together.

`<paths.flows>/deployments.py --project DIR` calls `serve_deployments`; `maquette up` runs that
script as the `deployments` component (with PREFECT_API_URL pointing at the platform's Prefect
server). Deployment names, for `run_deployment("FLOW/DEPLOYMENT")`, with the schedule each
takes from `orchestration.schedules.<flow>` (a cron; null: deployed, run on demand only):

    materialize/incremental      new feature rows -> Redis, up to now
    drain/prediction-log         the prediction log's Redis Stream -> Parquet
    monitor/models               monitoring of every declared model
    batch_predict/<model>        `orchestration.batch_entities` (null: every row of the model's
                                 entity source) scored by <model>@<default alias> into
                                 <batch_output>/<model>/<first>_<last>.parquet, named by the
                                 UTC dates of the entities' earliest and latest event time
    train/<model>                a new version of <model> (also started by monitoring alerts)

Each flow comes from the project's flows folder (`paths.flows`); a flow whose file is missing
is skipped with a warning in the log, and so is batch_predict for a model with neither
`batch_entities` nor an entity source.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from maquette.config import Settings
from maquette.errors import ConfigError
from maquette.platform.flows import FLOW_NAMES, flow_file, project_flow
from maquette.platform.schedules import held_schedules

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

log = logging.getLogger("maquette.deployments")


def _has_entity_source(settings: Settings, model: str) -> bool:
    """Whether batch_predict/<model> has entities to score by default (else a warning)."""
    try:
        settings.entity_source(settings.models[model])
    except ConfigError:
        log.warning(
            "model %s has no entity source and orchestration.batch_entities is not set: no "
            "batch_predict/%s deployment (set dataset.entity_source, or batch_entities to a "
            "DuckDB SELECT or a Parquet path of the entities to score daily)",
            model,
            model,
        )
        return False
    return True


def _schedules(settings: Settings, name: str) -> list[Any]:
    from prefect.schedules import Cron

    cron = getattr(settings.orchestration.schedules, name)
    return [Cron(cron, timezone=settings.orchestration.timezone)] if cron else []


def _parameters(settings: Settings) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Per flow: (deployment name, parameters) of each of its deployments."""
    project = str(settings.project_dir)
    alias = settings.serving.default_alias
    batch_dir = settings.path(settings.orchestration.batch_output)
    entities = settings.orchestration.batch_entities  # None: each model's entity source
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
            if entities is not None or _has_entity_source(settings, model)
        ],
        "train": [(model, {"name": model, "project_dir": project}) for model in settings.models],
    }


def flow_deployments(settings: Settings) -> list[RunnerDeployment]:
    """One deployment per flow (per model for batch_predict and train), schedules from settings."""
    wanted = _parameters(settings)
    built: list[RunnerDeployment] = []
    held = held_schedules(settings)  # e.g. by the demo: created paused, resumed when released
    for name in FLOW_NAMES:
        if flow_file(settings, name) is None:
            where = settings.path(settings.paths.flows) / f"{name}.py"
            log.warning("%s not found: its deployments are skipped", where)
            continue
        runnable = project_flow(settings, name)
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
