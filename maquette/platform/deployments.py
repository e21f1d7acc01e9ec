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

Whoever may create a flow run sets its parameters, so the flows take none naming a folder, a
file or SQL: a model name, view or model names, times. Paths and SQL come from the settings
the flow reads. Prefect checks a run's parameters against the flow's (a deployment enforces
its parameter schema), and the engine refuses a parameter the flow does not take.

The runner process answers GET /health on `orchestration.runner_port` and nothing else: Prefect's
own runner webserver would also answer POST /shutdown, to anyone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any, cast

from maquette.config import Settings
from maquette.errors import ConfigError
from maquette.platform.flows import FLOW_NAMES, flow_file, project_flow
from maquette.platform.runner_health import health_server, lower_priority
from maquette.platform.schedules import held_schedules

if TYPE_CHECKING:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
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
    """Per flow: (deployment name, parameters) of each of its deployments. No paths, no SQL:
    the flows read those from the project's settings."""
    alias = settings.serving.default_alias
    entities = settings.orchestration.batch_entities  # None: each model's entity source
    return {
        "materialize": [("incremental", {})],
        "drain": [("prediction-log", {})],
        "monitor": [("models", {})],
        "batch_predict": [
            (model, {"model": f"{model}@{alias}"})
            for model in settings.models
            if entities is not None or _has_entity_source(settings, model)
        ],
        "train": [(model, {"name": model}) for model in settings.models],
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
                concurrency_limit=_one_at_a_time(name),
            )
            built.append(_closed(cast("RunnerDeployment", deployment)))  # sync: not a coroutine
    return built


def _one_at_a_time(name: str) -> ConcurrencyLimitConfig | None:
    """One drain and one monitoring pass at a time (their file locks make an overlap safe;
    this keeps runs from racing). A monitoring pass due during a long one queues. A drain due
    while one runs is cancelled: the running drain moves everything pending, and queued drains
    ran back to back after a long one, each a fresh Python importing Prefect (~4 s of CPU for
    nothing; measured in BENCHMARKS.md, issue 18)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    if name == "drain":
        return ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        )
    if name == "monitor":
        return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    return None


def _closed(deployment: RunnerDeployment) -> RunnerDeployment:
    """The deployment with a parameter schema that refuses parameters the flow does not take
    (Prefect's allows any: the engine alone would refuse them, once the run starts)."""
    from prefect.utilities.callables import ParameterSchema
    from pydantic import ConfigDict

    class ClosedSchema(ParameterSchema):
        model_config = ConfigDict(extra="allow")

    schema = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
    deployment._parameter_openapi_schema = ClosedSchema(**schema, additionalProperties=False)
    return deployment


def serve_deployments(settings: Settings) -> None:
    """Create or update the deployments on the Prefect server and run their flow runs (blocks),
    answering GET /health on the runner port meanwhile. With `orchestration.work_pool`, they
    go to that work pool instead, whose workers run them (`platform.work_pool`)."""
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner
    from prefect.runner.server import perform_health_check

    if settings.orchestration.work_pool is not None:
        from maquette.platform.work_pool import serve_on_work_pool

        serve_on_work_pool(settings, flow_deployments(settings))
        return

    # Flow runs are child processes: they inherit the runner's niceness.
    lower_priority(settings.orchestration.flow_run_niceness)
    # A runner that stops leaves the schedules active: runs due while it is down show as late.
    runner = Runner(limit=settings.orchestration.run_limit, pause_on_shutdown=False)
    deployments = flow_deployments(settings)
    _off_work_pools(deployments)
    for deployment in deployments:
        runner.add_deployment(deployment)
    check = perform_health_check(runner)
    health = health_server(settings, lambda: check().status_code == 200)
    threading.Thread(target=health.serve_forever, name="runner-health", daemon=True).start()
    try:
        asyncio.run(runner.start(webserver=False))
    except (KeyboardInterrupt, TerminationSignal) as exc:
        log.info("%s: the runner stops", type(exc).__name__)
    finally:
        health.shutdown()
        health.server_close()


def _off_work_pools(deployments: list[RunnerDeployment]) -> None:
    """Delete the deployments of these names that an earlier `orchestration.work_pool` put on
    a pool: served again, they would keep the pool (a deployment's update never clears it) and
    that pool's workers would go on taking their runs. The runner creates them afresh."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for deployment in deployments:
            try:
                found = client.read_deployment_by_name(f"{deployment.flow_name}/{deployment.name}")
            except ObjectNotFound:
                continue
            if found.work_pool_name:
                log.info("%s leaves the work pool %s", found.name, found.work_pool_name)
                client.delete_deployment(found.id)
