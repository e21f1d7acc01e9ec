"""`maquette deploy ...`: manifests to run the project elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from maquette.cli.options import ProjectOpt, console, project_settings

deploy_app = typer.Typer(help="Manifests to run the project elsewhere.", no_args_is_help=True)


@deploy_app.command("kubernetes")
def deploy_kubernetes(
    image: Annotated[str, typer.Option(help="The containerized bento (bentoml containerize).")],
    out: Annotated[Path, typer.Option(help="File to write.")] = Path("maquette-k8s.yaml"),
    replicas: Annotated[int, typer.Option(min=1, help="Service replicas (HPA minimum).")] = 2,
    max_replicas: Annotated[int, typer.Option(min=1, help="HPA maximum.")] = 10,
    project: ProjectOpt = None,
) -> None:
    """Deployment, Service, HPA, ConfigMap for the service; a Deployment for the stream.

    Example: maquette deploy kubernetes --image registry/maquette_service:v3
    """
    from maquette.platform.kubernetes import manifests, secret_command

    settings = project_settings(project)
    docs = manifests(settings, image, replicas, max_replicas)
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    console.print(f"wrote {len(docs)} manifests to {out}; create their Secret first:")
    console.print(secret_command(settings), markup=False, soft_wrap=True)
