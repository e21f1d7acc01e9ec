"""The project's Prefect flows, loaded from its flows folder (`paths.flows`).

The CLI, the benchmarks and `flows/deployments.py` all load flows here, the way Prefect loads a
deployment's entrypoint (`path/to/file.py:function`), so a flow run by hand and a flow run by a
schedule are the same object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maquette.config import Settings
from maquette.errors import ConfigError

FLOW_NAMES = ("materialize", "drain", "monitor", "batch_predict", "train")
# The script `maquette up` runs as the `deployments` component: it serves every flow.
RUNNER = "deployments"


def flow_file(settings: Settings, name: str) -> Path | None:
    """The project's `<paths.flows>/<name>.py`, or None when the project has no such file."""
    path = settings.path(settings.paths.flows) / f"{name}.py"
    return path if path.is_file() else None


def _missing(settings: Settings, name: str) -> ConfigError:
    return ConfigError(
        f"The project has no flow file {settings.path(settings.paths.flows) / (name + '.py')}.",
        "Copy flows/ from Maquette's repository into the project, or point paths.flows "
        "in maquette.yaml at a folder that holds it.",
    )


def runner_file(settings: Settings) -> Path:
    """The project's `<paths.flows>/deployments.py`, which serves the flows' deployments."""
    path = flow_file(settings, RUNNER)
    if path is None:
        raise _missing(settings, RUNNER)
    return path


def project_flow(settings: Settings, name: str) -> Any:
    """The flow object `name` defined in the project's `<paths.flows>/<name>.py`."""
    # Prefect is imported here, not at module level: it takes seconds and `--help` must not.
    from prefect.flows import load_flow_from_entrypoint

    path = flow_file(settings, name)
    if path is None:
        raise _missing(settings, name)
    return load_flow_from_entrypoint(f"{path}:{name}", use_placeholder_flow=False)
