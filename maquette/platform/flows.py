"""The project's Prefect flows, loaded from its flows folder (`paths.flows`).

The CLI, the benchmarks and `flows/deployments.py` all load flows here, the way Prefect loads a
deployment's entrypoint (`path/to/file.py:function`), so a flow run by hand and a flow run by a
schedule are the same object. `run_flow` runs one on the platform's Prefect server, so a run
started from the command line shows in the platform's UI next to the scheduled ones.

A flow never takes its project, a path or SQL as a parameter: parameters of a deployment can
be set by whoever creates a run, so a flow reads the project's settings (`flow_settings`: the
project in MAQUETTE_PROJECT_DIR, which the runner and `platform_prefect` set). Every client of
the platform's server authenticates with its auth string (`prefect_auth`), given to Prefect
through settings or the environment, never on a command line.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from maquette.config import Settings, load_settings
from maquette.data.secrets import generated_secret
from maquette.errors import ConfigError

FLOW_NAMES = ("materialize", "drain", "monitor", "batch_predict", "train")
# The script `maquette up` runs as the `deployments` component: it serves every flow.
RUNNER = "deployments"
# Name of the Prefect server's generated auth string in the state folder's secrets.
PREFECT_AUTH = "prefect_auth"


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


def prefect_auth(settings: Settings) -> str:
    """The auth string of the platform's Prefect server: `orchestration.prefect_auth`, else the
    one generated into `<state>/secrets/prefect_auth` (mode 0600) on first use."""
    given = settings.orchestration.prefect_auth
    return (
        given.get_secret_value() if given is not None else generated_secret(settings, PREFECT_AUTH)
    )


def flow_settings() -> Settings:
    """The settings a flow runs with: its project's (MAQUETTE_PROJECT_DIR, else the current
    folder's), never a folder named by a run parameter."""
    return load_settings()


def prefect_api_client(settings: Settings, timeout_s: float = 2.0) -> httpx.Client:
    """A plain HTTP client of the platform's Prefect API (base URL .../api/), authenticated."""
    token = base64.b64encode(prefect_auth(settings).encode()).decode()
    return httpx.Client(
        base_url=f"{prefect_api_url(settings)}/",
        headers={"Authorization": f"Basic {token}"},
        timeout=timeout_s,
    )


def csrf_headers(client: httpx.Client) -> dict[str, str]:
    """Headers carrying a fresh CSRF token, which the server asks of every change (POST...)."""
    ident = f"maquette-{uuid.uuid4()}"
    answer = client.get("csrf-token", params={"client": ident})
    answer.raise_for_status()
    return {"Prefect-Csrf-Token": answer.json()["token"], "Prefect-Csrf-Client": ident}


def deployment_count(settings: Settings) -> int | None:
    """How many deployments the platform's Prefect server holds; None if it does not answer."""
    try:
        with prefect_api_client(settings) as client:
            answer = client.post("deployments/count", headers=csrf_headers(client), json={})
            answer.raise_for_status()
            return int(answer.json())
    except (httpx.HTTPError, ValueError, KeyError):
        return None


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
    """This process's Prefect pointed at `api_url` with the platform's auth string, its home in
    the project's state folder, and flows run in it reading this project's settings.

    Never a temporary server, and nothing under ~/.prefect.
    """
    home = settings.state_dir / "prefect"
    if "prefect" not in sys.modules:
        # Prefect creates its home folder when first imported: name the project's before that.
        os.environ.setdefault("PREFECT_HOME", str(home))
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_CLIENT_CSRF_SUPPORT_ENABLED,
        PREFECT_HOME,
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
        temporary_settings,
    )

    updates = {
        PREFECT_API_URL: api_url,
        PREFECT_API_AUTH_STRING: prefect_auth(settings),
        # The server checks a CSRF token on every change; the client fetches one first.
        PREFECT_CLIENT_CSRF_SUPPORT_ENABLED: True,
        PREFECT_HOME: home,
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE: False,
    }
    with temporary_settings(updates=updates), project_of_flows(settings):
        yield


@contextlib.contextmanager
def project_of_flows(settings: Settings) -> Iterator[None]:
    """MAQUETTE_PROJECT_DIR naming this project while flows run in this process."""
    before = os.environ.get("MAQUETTE_PROJECT_DIR")
    os.environ["MAQUETTE_PROJECT_DIR"] = str(settings.project_dir)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MAQUETTE_PROJECT_DIR", None)
        else:
            os.environ["MAQUETTE_PROJECT_DIR"] = before


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
