"""Flows run by Prefect workers of a work pool (`orchestration.work_pool`), here or elsewhere.

With a work pool set, the `deployments` component puts every deployment (the same names,
schedules, parameters and concurrency limits as served ones) on that Prefect *process* work
pool, created if missing, and runs one worker of it on this machine unless
`orchestration.local_worker` is false. `maquette worker` starts another worker, apart from the
platform, as it would run on another machine, against the platform's Prefect server.

Nothing in a deployment points into one checkout: its entrypoint is relative to the project
folder (`flows/drain.py:drain`), it has no path, and its one pull step enters the folder the
worker's `MAQUETTE_PROJECT_DIR` names (Prefect resolves `{{ $VAR }}` from the flow run's
environment). A worker elsewhere runs the flows from its own copy of the project, with the
settings that copy reads (a Redis, a Prefect server and folders it can reach).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from maquette.config import Settings, load_settings
from maquette.errors import ConfigError
from maquette.platform.runner_health import health_server, lower_priority

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

log = logging.getLogger("maquette.work_pool")
POOL_TYPE = "process"
# The pull step every deployment on the pool has: the worker's project folder, not ours.
ENTER_PROJECT = {
    "prefect.deployments.steps.set_working_directory": {"directory": "{{ $MAQUETTE_PROJECT_DIR }}"}
}


class WorkersProjectFolder:
    """The "storage" of a deployment on the pool: no code to pull, only the step that enters
    the worker's own copy of the project. Given to `apply`, it makes the deployment's create
    and update carry that step and no path in one request (without it, each redeploy sent no
    pull step first, and a worker claiming a run meanwhile found no flow)."""

    def set_base_path(self, path: Path) -> None:
        pass

    @property
    def pull_interval(self) -> int | None:
        return None

    @property
    def destination(self) -> Path:
        return Path(".")

    async def pull_code(self) -> None:
        return None

    def to_pull_step(self) -> dict[str, Any]:
        return ENTER_PROJECT


def work_pool_name(settings: Settings) -> str:
    pool = settings.orchestration.work_pool
    if pool is None:
        raise ConfigError(
            "orchestration.work_pool is not set: the platform runs its flows itself.",
            "Set orchestration.work_pool (e.g. `maquette`) on the platform and here, then start "
            "workers with `maquette worker`.",
        )
    return pool


def _flows_inside_the_project(settings: Settings) -> None:
    flows = settings.path(settings.paths.flows)
    if not flows.is_relative_to(settings.project_dir):
        raise ConfigError(
            f"paths.flows ({flows}) is outside the project folder: a worker on another machine "
            "finds flows relative to its copy of the project.",
            "Keep the flows folder inside the project (the default, flows/).",
        )


def register_on_work_pool(settings: Settings, deployments: list[RunnerDeployment]) -> list[UUID]:
    """Create the pool if missing and put these deployments (`deployments.flow_deployments`)
    on it; their ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    pool = work_pool_name(settings)
    _flows_inside_the_project(settings)
    ids = []
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type=POOL_TYPE))
        for deployment in deployments:
            deployment.storage = WorkersProjectFolder()
            # Sync here: async_dispatch gives the id, not a coroutine, outside an event loop.
            deployment_id = cast("UUID", deployment.apply(work_pool_name=pool))
            # An update keeps the path a served deployment of the same name had (this
            # machine's folder): cleared.
            client.update_deployment(deployment_id, DeploymentUpdate(path=None))
            ids.append(deployment_id)
    log.info("%d deployments on the work pool %s", len(ids), pool)
    return ids


def run_worker(settings: Settings, health: bool = True) -> None:
    """A process worker of the pool (blocks), answering GET /health on the runner port when
    `health` (the platform's); its flow runs are child processes with this process's
    environment."""
    from prefect.settings import PREFECT_WORKER_QUERY_SECONDS
    from prefect.workers.process import ProcessWorker

    pool = work_pool_name(settings)
    lower_priority(settings.orchestration.flow_run_niceness)  # its flow runs inherit it
    name = f"maquette {socket.gethostname()} {settings.project_dir.name} {os.getpid()}"
    worker = ProcessWorker(work_pool_name=pool, name=name, limit=settings.orchestration.run_limit)
    interval = PREFECT_WORKER_QUERY_SECONDS.value()
    server = None
    if health:
        server = health_server(settings, lambda: worker.is_worker_still_polling(interval))
        threading.Thread(target=server.serve_forever, name="worker-health", daemon=True).start()
    try:
        asyncio.run(worker.start())
    except KeyboardInterrupt:
        log.info("the worker stops")
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def serve_on_work_pool(settings: Settings, deployments: list[RunnerDeployment]) -> None:
    """The `deployments` component with a work pool: register, then run this machine's worker
    (or, with local_worker false, only answer /health while the Prefect server does)."""
    register_on_work_pool(settings, deployments)
    if settings.orchestration.local_worker:
        run_worker(settings)
        return
    _registered_only(settings)


def _registered_only(settings: Settings) -> None:
    """Answer /health while the Prefect server answers; nothing runs flows here."""
    from maquette.platform.flows import platform_prefect_url

    health = health_server(settings, lambda: platform_prefect_url(settings) is not None)
    try:
        health.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        health.server_close()


def worker_environment(settings: Settings) -> dict[str, str]:
    """What a worker (and its flow runs) is given: the project's folder, BentoML home and
    Prefect server with its auth string, optimized Python, nothing of this shell's Prefect."""
    from maquette.platform.launch import prefect_client_env, project_env
    from maquette.platform.supervisor import inherited_env
    from maquette.serving.server import optimized_python

    base = {k: v for k, v in inherited_env().items() if not k.startswith("PREFECT_")}
    return {
        **base,
        **project_env(settings),
        **prefect_client_env(settings),
        **optimized_python(settings),
    }


def start_worker(settings: Settings) -> None:
    """`maquette worker`: replace this process with a worker of the pool (a fresh Python, so
    Prefect reads the environment above from the start)."""
    work_pool_name(settings)
    _flows_inside_the_project(settings)
    module = [sys.executable, "-m", "maquette.platform.work_pool"]
    command = [*module, "--project", str(settings.project_dir), "--no-health"]
    sys.stdout.flush()
    os.chdir(settings.project_dir)
    os.execvpe(command[0], command, worker_environment(settings))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A Prefect worker of the project's work pool.")
    parser.add_argument("--project", type=Path, default=None, help="Folder holding maquette.yaml.")
    parser.add_argument(
        "--no-health",
        dest="health",
        action="store_false",
        help="No GET /health on orchestration.runner_port (the platform's own runner has it).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_worker(load_settings(args.project), args.health)


if __name__ == "__main__":
    main()
