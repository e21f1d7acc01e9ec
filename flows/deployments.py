"""Prefect deployments for every flow, built from the settings and served by one process.

`maquette up` runs this file as the `deployments` component (`python flows/deployments.py
--project DIR` with PREFECT_API_URL pointing at the platform's Prefect server). Deployment names,
for `prefect.deployments.run_deployment("FLOW/DEPLOYMENT")`, with the schedule each takes from
`orchestration.schedules.<flow>` (a cron; null: deployed, run on demand only):

    materialize/incremental      new feature rows -> Redis, up to now
    drain/prediction-log         the prediction log's Redis Stream -> Parquet
    monitor/models               monitoring of every declared model
    batch_predict/<model>        `orchestration.batch_entities` scored by <model>@<default alias>
                                 into <batch_output>/<model>/<run date>.parquet
    train/<model>                a new version of <model> (also started by monitoring alerts)

A flow's file comes from the project's flows/ folder, else from this checkout's; a flow whose
file is missing is skipped with a warning in the log.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow

from maquette.config import Settings, load_settings

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

CHECKOUT = Path(__file__).resolve().parent.parent
FLOWS = ("materialize", "drain", "monitor", "batch_predict", "train")
log = logging.getLogger("maquette.deployments")


def flow_file(settings: Settings, name: str) -> Path | None:
    """flows/<name>.py of the project, else of this checkout (None when neither has it)."""
    for root in (settings.project_dir, CHECKOUT):
        if (root / "flows" / f"{name}.py").is_file():
            return root / "flows" / f"{name}.py"
    return None


def project_flow(settings: Settings, name: str) -> Any:
    """The flow object `name` from its file (loaded the way Prefect loads entrypoints)."""
    from prefect.flows import load_flow_from_entrypoint

    path = flow_file(settings, name)
    if path is None:
        raise FileNotFoundError(f"no flows/{name}.py in {settings.project_dir} or {CHECKOUT}")
    return load_flow_from_entrypoint(f"{path}:{name}", use_placeholder_flow=False)


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


def deployments(settings: Settings) -> list[RunnerDeployment]:
    """One deployment per flow (per model for batch_predict and train), schedules from settings."""
    project = str(settings.project_dir)
    alias = settings.serving.default_alias
    batch_dir = settings.path(settings.orchestration.batch_output)
    wanted: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "materialize": [("incremental", {"project_dir": project})],
        "drain": [("prediction-log", {"project_dir": project})],
        "monitor": [("models", {"project_dir": project})],
        "batch_predict": [
            (
                model,
                {
                    "model": f"{model}@{alias}",
                    "entities": settings.orchestration.batch_entities,
                    "output_dir": str(batch_dir / model),
                    "project_dir": project,
                },
            )
            for model in settings.models
        ],
        "train": [(model, {"name": model, "project_dir": project}) for model in settings.models],
    }
    built = []
    for name in FLOWS:
        if flow_file(settings, name) is None:
            log.warning("flows/%s.py not found: its deployments are skipped", name)
            continue
        runnable = dated_batch_predict if name == "batch_predict" else project_flow(settings, name)
        for deployment_name, parameters in wanted[name]:
            built.append(
                runnable.to_deployment(
                    deployment_name,
                    schedules=_schedules(settings, name),
                    parameters=parameters,
                    tags=["maquette"],
                )
            )
    return built


def serve_deployments(settings: Settings) -> None:
    """Create or update the deployments on the Prefect server and run their flow runs (blocks)."""
    from prefect import serve

    # A runner that stops leaves the schedules active: runs due while it is down show as late.
    serve(
        *deployments(settings),
        limit=settings.orchestration.run_limit,
        pause_on_shutdown=False,
        webserver=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=None, help="Folder holding maquette.yaml.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve_deployments(load_settings(parser.parse_args().project))
