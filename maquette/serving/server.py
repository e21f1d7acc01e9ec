"""The prediction service as a process: `bentoml serve` of the project's own bento service.

The service is the project's `<paths.bentos>/service.py` (class `PredictionService`), imported
with the project folder as working directory, so one project never serves another's code and a
wheel install plus a project folder can serve.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from maquette.config import Settings
from maquette.errors import ConfigError

SERVICE_CLASS = "PredictionService"


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_exposure(settings: Settings, host: str | None = None, key_given: bool = False) -> None:
    """Refuse to serve on an interface other machines reach without an API key.

    Any process that can reach the port could otherwise read predictions, probe the feature
    store through them and fill the prediction log.
    """
    host = host or settings.serving.host
    if is_loopback(host) or key_given or settings.serving.api_key is not None:
        return
    raise ConfigError(
        f"the prediction service would listen on {host}, which other machines can reach, "
        "without an API key.",
        "Set one in the service's environment: export MAQUETTE_SERVING_API_KEY=<a long random "
        "string> (clients send `Authorization: Bearer <key>`), or bind serving.host to "
        "127.0.0.1.",
    )


def service_target(settings: Settings) -> tuple[str, str]:
    """(working directory, import path) of the project's BentoML service for `bentoml serve`."""
    folder = settings.path(settings.paths.bentos)
    if not (folder / "service.py").is_file():
        raise ConfigError(
            f"no BentoML service at {folder / 'service.py'}.",
            "Copy bentos/ from the Maquette checkout into the project, or set paths.bentos.",
        )
    if not folder.name.isidentifier():
        raise ConfigError(
            f"the bentos folder {folder} is not a Python package name.",
            "Rename it (e.g. bentos) and set paths.bentos to it.",
        )
    # Imported as `<folder>.service`, as bentofile.yaml names it, from the folder's parent.
    return str(folder.parent), f"{folder.name}.service:{SERVICE_CLASS}"


def bentoml_home(settings: Settings) -> str:
    """The BentoML home whose model store this project's processes read and write."""
    # Given to every process the project starts, so a service never reads another project's
    # store, or ~/bentoml, by falling back to BentoML's default.
    if settings.registry.bentoml_home is not None:
        return str(settings.path(settings.registry.bentoml_home))
    return os.environ.get("BENTOML_HOME") or str(Path.home() / "bentoml")


def optimized_python(settings: Settings) -> dict[str, str]:
    """The environment of a process started with `orchestration.optimize_python`."""
    return {"PYTHONOPTIMIZE": "1"} if settings.orchestration.optimize_python else {}


def service_command(
    settings: Settings, host: str, port: int, env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of `bentoml serve` for the project's bento service (`paths.bentos`);
    run it with the project folder as working directory."""
    # A key given in the child's environment counts: that is where the service reads it.
    check_exposure(settings, host, bool((env or {}).get("MAQUETTE_SERVING_API_KEY")))
    working_dir, target = service_target(settings)
    # Feast points PROMETHEUS_MULTIPROC_DIR at its own folder when imported; inherited, it
    # would make every service started from this process share (and overwrite) one metrics
    # folder. BentoML makes a folder per server when the variable is unset.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    environment = {
        **inherited,
        "MAQUETTE_PROJECT_DIR": str(settings.project_dir),
        "BENTOML_HOME": bentoml_home(settings),
        "PYTHONWARNINGS": "ignore",
        **optimized_python(settings),
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        target,
        "--working-dir",
        working_dir,
        "--host",
        host,
        "--port",
        str(port),
    ]
    return command, environment


def service_process(
    settings: Settings,
    host: str,
    port: int,
    env: dict[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """`bentoml serve` of the project's bento service (`paths.bentos`), started for `settings`."""
    command, environment = service_command(settings, host, port, env)
    return subprocess.Popen(command, cwd=settings.project_dir, env=environment, **popen)
