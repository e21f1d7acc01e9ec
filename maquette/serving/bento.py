"""Building a bento: the project's service, the maquette package and every served model.

The build reads the project's `<paths.bentos>/bentofile.yaml`, pins each declared model at its
serving alias (`serving.default_alias`), and runs `bentoml build` over a staged build context:
the project's files that the bentofile includes, the installed `maquette` package beside them
(a project folder holds no copy of it), and a snapshot of the alias table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

import maquette
from maquette import registry
from maquette.config import Settings
from maquette.data.secrets import without_credentials
from maquette.errors import ConfigError

ALIAS_SNAPSHOT = ".aliases.json"


def bento_spec(settings: Settings) -> dict[str, Any]:
    """The project's bentofile with the served models pinned and the alias snapshot included."""
    folder = settings.path(settings.paths.bentos)
    source = folder / "bentofile.yaml"
    if not source.is_file():
        raise ConfigError(
            f"the project has no bento spec {source}.",
            "Copy bentos/ from Maquette's repository into the project, or point paths.bentos "
            "in maquette.yaml at a folder holding bentofile.yaml and service.py.",
        )
    snapshot = f"{_inside_project(settings, folder)}/{ALIAS_SNAPSHOT}"
    spec: dict[str, Any] = yaml.safe_load(source.read_text())
    alias = settings.serving.default_alias
    spec["models"] = [registry.resolve(settings, f"{name}@{alias}").tag for name in settings.models]
    spec["include"] = [*spec.get("include", []), snapshot]
    # The bento answers NAME@alias from the table as it is at build time.
    spec["envs"] = [{"name": "MAQUETTE_REGISTRY_ALIASES", "value": snapshot}]
    return spec


def build_context(settings: Settings, spec: dict[str, Any]) -> Path:
    """A fresh folder holding what the bento is built from (under the state folder)."""
    context = settings.state_dir / "bento_context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    project = settings.project_dir.resolve()
    for pattern in spec.get("include", []):
        for path in project.glob(pattern):
            if path.is_file() and context not in path.parents:
                target = context / path.relative_to(project)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    # The service imports maquette: ship the installed package, wherever it is installed.
    shutil.copytree(
        Path(maquette.__file__).parent,
        context / "maquette",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        dirs_exist_ok=True,
    )
    _drop_secrets(context / "maquette.yaml")
    snapshot = context / _inside_project(settings, settings.path(settings.paths.bentos))
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / ALIAS_SNAPSHOT).write_text(registry.alias_snapshot(settings))
    return context


def build_bento(settings: Settings, announce: Callable[[str], None] = lambda _: None) -> int:
    """Run `bentoml build` over the staged build context; returns its exit code (0: built)."""
    spec = bento_spec(settings)
    context = build_context(settings, spec)
    target = settings.state_dir / "bentofile.yaml"
    target.write_text(yaml.safe_dump(spec))
    announce(f"building with models {', '.join(spec['models'])}")
    env = {**os.environ, "UV_OFFLINE": "1"}  # builds offline; the package index is not needed
    return subprocess.call(
        [sys.executable, "-m", "bentoml", "build", "-f", str(target), str(context)],
        cwd=context,
        env=env,
    )


# Settings a bento never carries: it is copied, pushed and inspected. The service reads them
# from its environment (MAQUETTE_SERVING_API_KEY, ...) or the project's secret files at start.
SECRET_SETTINGS = (("serving", "api_key"), ("redis", "password"), ("orchestration", "prefect_auth"))


def _drop_secrets(config: Path) -> None:
    """The staged maquette.yaml without credentials: the secret settings, and the password of a
    `redis.url` (kept as the address: the deployment gives MAQUETTE_REDIS_URL in full)."""
    if not config.is_file():
        return
    values = yaml.safe_load(config.read_text()) or {}
    changed = False
    for section, name in SECRET_SETTINGS:
        part = values.get(section)
        if isinstance(part, dict) and name in part:
            del part[name]
            changed = True
    redis = values.get("redis")
    if isinstance(redis, dict) and isinstance(redis.get("url"), str):
        bare = without_credentials(redis["url"])
        changed = changed or bare != redis["url"]
        redis["url"] = bare
    if changed:
        config.write_text(yaml.safe_dump(values, sort_keys=False))


def _inside_project(settings: Settings, path: Path) -> str:
    """`path` relative to the project folder, as the bentofile's include patterns are."""
    try:
        return path.resolve().relative_to(settings.project_dir.resolve()).as_posix()
    except ValueError:
        raise ConfigError(
            f"paths.bentos ({path}) is outside the project folder {settings.project_dir}.",
            "The bento is built from the project folder: keep paths.bentos inside it.",
        ) from None
