"""What supervisord runs for each component: `python -m maquette.platform.launch NAME --project DIR`.

It reads the project's settings, stops whatever a crashed earlier incarnation of the component
left behind (a `bentoml serve` killed with -9 leaves workers holding the port), waits for the
component's dependencies to answer (Redis for the service and the stream processor, Prefect for
the deployments' runner), then replaces itself with the component's own command, so
supervisord watches the component itself and its signals reach it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from maquette.config import Settings, load_settings
from maquette.data import postgres_server, redis_server
from maquette.data.secrets import write_private
from maquette.platform.flows import prefect_api_url, prefect_auth, runner_file
from maquette.platform.supervisor import (
    GAVE_UP_EXIT,
    component_mark,
    inherited_env,
    run_dir,
)
from maquette.serving.server import bentoml_home, optimized_python, service_command

# Environment variable carrying component_mark(): inherited by every child of a component.
MARK = "MAQUETTE_COMPONENT"
COMPONENTS = ("redis", "postgres", "prefect", "deployments", "service", "stream", "console")
# What each component needs answering before it starts (when the platform runs it); the
# Prefect server also needs its PostgreSQL, when it keeps its state there (`needs`).
NEEDS = {"deployments": ("prefect",), "service": ("redis",), "stream": ("redis",)}
# Starts counted for crash loops: more than `orchestration.start_retries` restarts in this
# window and the component is given up (until the next `maquette up`).
CRASH_WINDOW_S = 120.0


def prefect_env(settings: Settings) -> dict[str, str]:
    """Environment of the Prefect processes: the platform's server, state under the state dir."""
    return {
        "PREFECT_HOME": str(settings.state_dir / "prefect"),
        "PREFECT_API_URL": prefect_api_url(settings),
        # Offline, the analytics call only writes an error into the server's log.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        # Prefect's runner webserver answers POST /shutdown to anyone: the deployments'
        # runner serves Maquette's health-only endpoint instead (platform.deployments).
        "PREFECT_RUNNER_SERVER_ENABLE": "false",
    }


def prefect_client_env(settings: Settings) -> dict[str, str]:
    """What a client of the platform's Prefect server needs besides `prefect_env`: the auth
    string (in the environment, which only the user can read, never on a command line)."""
    return {
        "PREFECT_API_AUTH_STRING": prefect_auth(settings),
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "true",
    }


def prefect_server_env(settings: Settings) -> dict[str, str]:
    """The Prefect server's locks: the auth string on every API call but the health check,
    a CSRF token on every change, and browsers allowed only from the server's own origin;
    and its database, when that is PostgreSQL (the URL holds a password: environment only)."""
    o = settings.orchestration
    origins = [o.prefect_url]
    if o.host == "127.0.0.1":  # the UI opened as localhost calls the API at 127.0.0.1
        origins.append(f"http://localhost:{o.prefect_port}")
    database = {}
    if postgres_server.uses_postgres(settings):
        url = postgres_server.connection_url(settings)
        database = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": url}
    return {
        **database,
        **prefect_client_env(settings),
        "PREFECT_SERVER_API_AUTH_STRING": prefect_auth(settings),
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ",".join(origins),
    }


def project_env(settings: Settings) -> dict[str, str]:
    """What every process of the project is given, so none falls back to a machine default:
    its project folder (hence its settings and Redis), BentoML home and Prefect server."""
    return {
        "MAQUETTE_PROJECT_DIR": str(settings.project_dir),
        "BENTOML_HOME": bentoml_home(settings),
        **prefect_env(settings),
    }


def component_command(settings: Settings, name: str) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a component as the platform runs it."""
    # Feast sets PROMETHEUS_MULTIPROC(ESS)_DIR to a folder that dies with the process that ran
    # `up`; inherited, both projects would share it and crash on `import feast` once it is gone.
    base = inherited_env()
    env = {**base, **project_env(settings), MARK: component_mark(settings, name)}
    o, project = settings.orchestration, str(settings.project_dir)
    if name == "redis":
        return redis_server.embedded_command(settings), env
    if name == "postgres":
        server_env = postgres_server.server_env(settings) | {MARK: env[MARK]}
        return postgres_server.server_command(settings), server_env
    if name == "service":
        return service_command(settings, settings.serving.host, settings.serving.port, env)
    python = [sys.executable]
    if name == "prefect":
        bind = ["--host", o.host, "--port", str(o.prefect_port)]
        return [*python, "-m", "prefect", "server", "start", *bind], env | prefect_server_env(
            settings
        )
    if name == "deployments":
        runner = [*python, str(runner_file(settings)), "--project", project]
        return runner, env | prefect_client_env(settings) | optimized_python(settings)
    if name == "stream":
        stream = [*python, "-m", "maquette", "stream", "run", "--project", project]
        return stream, env | optimized_python(settings)
    if name == "console":
        console = [*python, "-m", "maquette", "ui", "--project", project]
        return console, env | optimized_python(settings)
    raise ValueError(f"unknown component {name!r}")


def leftovers(settings: Settings, name: str) -> list[psutil.Process]:
    """Live processes of the component other than this one (and its ancestors)."""
    mark, me = component_mark(settings, name), os.getpid()
    mine = {me, *(p.pid for p in psutil.Process(me).parents())}
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if process.pid in mine or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(MARK) == mark:
                found.append(process)
    return found


def stop_leftovers(settings: Settings, name: str, timeout_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL, to what an earlier incarnation left; returns how many there were."""
    # PostgreSQL's processes rewrite their environment (their titles): its lock file names them.
    stopped = int(
        name == "postgres"
        and postgres_server.is_embedded(settings)
        and postgres_server.stop(settings, timeout_s)
    )
    found = leftovers(settings, name)
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(found, timeout=timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout_s)
    return stopped + len(found)


def needs(settings: Settings, name: str) -> tuple[str, ...]:
    """The components that must answer before `name` starts."""
    if name == "prefect" and postgres_server.uses_postgres(settings):
        return ("postgres",)
    return NEEDS.get(name, ())


def answers(settings: Settings, name: str) -> bool:
    """True when a dependency answers: Redis PING, a query to PostgreSQL, Prefect's /api/health."""
    if name == "redis":
        return redis_server.answers(settings)
    if name == "postgres":
        return postgres_server.answers(settings)
    try:
        url = f"{prefect_api_url(settings)}/health"
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for_dependencies(settings: Settings, name: str) -> None:
    """Block until every dependency answers, retrying with backoff (up to 5 s apart)."""
    delay = 0.2
    for needed in needs(settings, name):
        since = time.monotonic()
        while not answers(settings, needed):
            if delay >= 5:
                _say(f"waiting for {needed} ({time.monotonic() - since:.0f}s so far)")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _starts_file(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.starts.json"


def forget_starts(settings: Settings, name: str) -> None:
    """Start counting crash loops afresh (`maquette up` starting a component by hand)."""
    _starts_file(settings, name).unlink(missing_ok=True)


def restart_delay(settings: Settings, name: str) -> float | None:
    """Seconds to wait before this start (0, then 1, 2, 4... up to 30 as crashes repeat), or None
    when the component restarted more than `start_retries` times within CRASH_WINDOW_S."""
    # supervisord backs off only for processes that die within `startsecs`; a component that
    # dies after a slow start (Python imports take seconds) would be restarted forever.
    path, now = _starts_file(settings, name), time.time()
    try:
        starts = [t for t in json.loads(path.read_text()) if now - t < CRASH_WINDOW_S]
    except (OSError, ValueError):
        starts = []
    if len(starts) > settings.orchestration.start_retries:
        path.unlink(missing_ok=True)
        return None
    write_private(path, json.dumps([*starts, now]))
    # The first restart after a crash is immediate; the next ones wait 1, 2, 4... seconds.
    return 0.0 if len(starts) <= 1 else min(2.0 ** (len(starts) - 2), 30.0)


def _say(message: str) -> None:
    print(f"--- {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC {message}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("component", choices=COMPONENTS)
    parser.add_argument("--project", default=None, help="Folder holding maquette.yaml.")
    parser.add_argument(
        "--environment",
        type=Path,
        default=None,
        help="JSON of the MAQUETTE_* `up` ran with, and the BentoML home it resolved.",
    )
    args = parser.parse_args(argv)
    # What a component writes (logs, the prediction log's files, Feast's registry, state) is
    # its user's alone.
    os.umask(0o077)
    if args.environment is not None:  # the settings `up` read, whatever supervisord inherited
        for key in [k for k in os.environ if k.startswith("MAQUETTE_")]:
            del os.environ[key]
        os.environ.update(json.loads(args.environment.read_text()))  # and BENTOML_HOME
    settings = load_settings(args.project)
    # Marked from here on, not only once it becomes the component: a launcher still waiting
    # (backoff, dependencies) is found and stopped by `down` or by the next start.
    os.environ[MARK] = component_mark(settings, args.component)
    delay = restart_delay(settings, args.component)
    if delay is None:
        retries = settings.orchestration.start_retries
        _say(f"gave up: {args.component} exited {retries + 1} times in {CRASH_WINDOW_S:.0f}s")
        # supervisord counts an exit within `startsecs` as a failed start and retries it,
        # whatever the code: outlive it, so the exit counts as expected and it stays stopped.
        time.sleep(settings.orchestration.settle_s + 0.5)
        sys.exit(GAVE_UP_EXIT)
    if delay:
        _say(f"restarting {args.component} in {delay:.0f}s (it exited again)")
        time.sleep(delay)
    _say(f"maquette up: starting {args.component}")
    if stopped := stop_leftovers(settings, args.component):
        _say(f"stopped {stopped} leftover process(es) of an earlier {args.component}")
    wait_for_dependencies(settings, args.component)
    command, env = component_command(settings, args.component)
    folder = settings.project_dir
    if args.component == "postgres":
        folder = postgres_server.initialize(settings).parent  # a folder its user can enter
        postgres_server.become_os_user(settings)
    elif args.component == "prefect":
        postgres_server.ensure_database(settings)
    sys.stdout.flush()
    os.chdir(folder)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
