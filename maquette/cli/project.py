"""`maquette init` and `maquette url`: a new project folder, and where its components answer."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from maquette.cli.options import ProjectOpt, console, project_settings

commands = typer.Typer()


@commands.command("init")
def init(
    folder: Annotated[Path, typer.Argument(help="New (or empty) folder for the project.")],
    example: Annotated[
        bool, typer.Option(help="Also write a generated ratings dataset and two models over it.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Write into a folder that is not empty.")] = False,
) -> None:
    """Create a project: maquette.yaml, feature_repo/, features_sql/, flows/, bentos/.

    Example: maquette init shop --example
    """
    from maquette.project import init_project

    result = init_project(folder, example=example, force=force)
    p = result.ports
    console.print(f"created {escape(str(result.folder))} ({len(result.files)} files and folders)")
    console.print(
        f"ports: redis {p.redis}, service {p.serving}, prefect {p.prefect}, runner {p.runner}, "
        f"console {p.console}"
    )
    console.print(f"you write: {result.user_lines} lines of YAML, SQL and Python (comments aside)")
    first = "" if example else "put your tables in data/ and edit maquette.yaml, then "
    go = escape(shlex.quote(str(folder)))  # pasted into a shell as printed
    console.print(f"next: cd {go} && {first}maquette data load && maquette features apply")


@commands.command("url")
def url(
    component: Annotated[
        Literal["service", "prefect", "redis", "console"], typer.Argument(help="Which component.")
    ] = "service",
    project: ProjectOpt = None,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Print Redis's password too (for redis-cli -u).")
    ] = False,
) -> None:
    """Print the URL of this project's service, Prefect server, Redis or console (ports differ per
    project).

    The Redis password is shown as *** unless --reveal: `redis-cli -u "$(maquette url redis
    --reveal)"`.

    Example: maquette url service   (in a script: curl -s "$(maquette url)/readyz")
    """
    from maquette.data import redis_server
    from maquette.data.secrets import redact

    settings = project_settings(project)
    urls = {
        "service": f"http://{settings.serving.host}:{settings.serving.port}",
        "prefect": settings.orchestration.prefect_url,
        "redis": redis_server.store_url(settings),
        "console": f"http://{settings.console.host}:{settings.console.port}",
    }
    shown = urls[component] if reveal else redact(urls[component])
    print(shown)  # plain: meant for $(...)
