"""The project's Prefect flows, loaded from its flows folder (`paths.flows`).

The CLI, the benchmarks and `flows/deployments.py` all load flows here, the way Prefect loads a
deployment's entrypoint (`path/to/file.py:function`), so a flow run by hand and a flow run by a
schedule are the same object. `run_flow` runs one on the platform's Prefect server, so a run
started from the command line shows in the platform's UI next to the scheduled ones.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

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


@dataclass(frozen=True)
class PlatformFlowRun:
    """A flow run on the platform's Prefect server: what the flow returned, where to see it."""

    flow: str
    url: str  # the run's page in the Prefect UI
    result: Any


def prefect_api_url(settings: Settings) -> str:
    """The API of the platform's Prefect server (what PREFECT_API_URL must say)."""
    return f"{settings.orchestration.prefect_url}/api"


def platform_prefect_url(settings: Settings, timeout_s: float = 1.0) -> str | None:
    """The API URL of the platform's Prefect server if it answers /api/health now, else None."""
    url = prefect_api_url(settings)
    try:
        answered = httpx.get(f"{url}/health", timeout=timeout_s).is_success
    except httpx.HTTPError:
        return None
    return url if answered else None


@contextlib.contextmanager
def platform_prefect(settings: Settings, api_url: str) -> Iterator[None]:
    """This process's Prefect pointed at `api_url`, its home in the project's state folder.

    Never a temporary server, and nothing under ~/.prefect.
    """
    home = settings.state_dir / "prefect"
    if "prefect" not in sys.modules:
        # Prefect creates its home folder when first imported: name the project's before that.
        os.environ.setdefault("PREFECT_HOME", str(home))
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
        temporary_settings,
    )

    updates = {
        PREFECT_API_URL: api_url,
        PREFECT_HOME: home,
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE: False,
    }
    with temporary_settings(updates=updates):
        yield


def run_flow(settings: Settings, name: str, *args: Any, **kwargs: Any) -> PlatformFlowRun | None:
    """Run the project's flow `name` on the platform's Prefect server; None if it is not up.

    The flow runs in this process and reports to the server; a failed run raises its error.
    """
    api_url = platform_prefect_url(settings)
    if api_url is None:
        return None
    with platform_prefect(settings, api_url):
        state = project_flow(settings, name)(*args, return_state=True, **kwargs)
        result = state.result()  # raises what made the run fail
    run_id = state.state_details.flow_run_id
    return PlatformFlowRun(
        name, f"{settings.orchestration.prefect_url}/runs/flow-run/{run_id}", result
    )
