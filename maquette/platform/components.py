"""The running platform: start, check and stop what `maquette up` keeps running, all on loopback.

    component     process                                          health check
    redis         redis-server daemon (redis_server.ensure_redis)   PING
    prefect       prefect server start, PREFECT_HOME in the state   GET /api/health
    deployments   <paths.flows>/deployments.py: Prefect `serve`     GET /health of the runner
    service       bentoml serve of <paths.bentos>/service.py        GET /readyz (/healthz: unready)
    stream        maquette stream run                               alive for a few seconds

Each process starts in a session of its own, so it outlives the command that started it, and
carries a token in its environment that its children inherit, so stopping it also stops them
(flow runs, BentoML workers), even after its leader was killed. Its pid goes
to <state>/run/<component>.json and its output to <state>/logs/<component>.log. A recorded
process that is gone is "crashed": `status` says so and `up` starts it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from maquette.config import Settings
from maquette.data import redis_server
from maquette.errors import ComponentFailed, ConfigError
from maquette.platform.flows import runner_file
from maquette.serving.server import service_process, service_target

COMPONENTS = ("redis", "prefect", "deployments", "service", "stream")
# Started only once these answer (when they are started too).
NEEDS = {"deployments": ("prefect",), "service": ("redis",), "stream": ("redis",)}
# Alive at least this long before a component without a health endpoint counts as running.
SETTLE_S = 3.0
UP = ("running", "unready")  # states in which `up` leaves a component alone
# Environment variable marking every process of a component, children included.
MARK = "MAQUETTE_COMPONENT_TOKEN"


@dataclass(frozen=True)
class ComponentStatus:
    """One line of `maquette status`."""

    name: str
    state: str  # running | unready | starting | unhealthy | crashed | stopped
    url: str | None = None
    pid: int | None = None
    log: Path | None = None
    detail: str = ""

    @property
    def is_up(self) -> bool:
        """Running, or alive and answering but not ready (a service without models)."""
        return self.state in UP


def prefect_api_url(settings: Settings) -> str:
    """The API of the platform's Prefect server (what PREFECT_API_URL must say)."""
    return f"{settings.orchestration.prefect_url}/api"


@contextlib.contextmanager
def prefect_api(settings: Settings) -> Iterator[str]:
    """Point this process's Prefect client at the platform's server, e.g. for run_deployment."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = prefect_api_url(settings)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


def run_deployment(
    settings: Settings, name: str, parameters: dict[str, Any] | None = None, timeout_s: float = 0
) -> Any:
    """Start FLOW/DEPLOYMENT (e.g. "train/<model>") on the platform; wait up to timeout_s."""
    from prefect.deployments import run_deployment as start

    with prefect_api(settings):
        return start(name, parameters=parameters, timeout=timeout_s, poll_interval=1)


def prefect_env(settings: Settings) -> dict[str, str]:
    """Environment of the Prefect processes: the platform's server, state under the state dir."""
    o = settings.orchestration
    return {
        "PREFECT_HOME": str(settings.state_dir / "prefect"),
        "PREFECT_API_URL": prefect_api_url(settings),
        # Offline, the analytics call only writes an error into the server's log.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_RUNNER_SERVER_HOST": o.host,
        "PREFECT_RUNNER_SERVER_PORT": str(o.runner_port),
        "MAQUETTE_PROJECT_DIR": str(settings.project_dir),
    }


# ---------------------------------------------------------------------------- the components


def _log_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / "logs" / f"{name}.log"


def _record_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / "run" / f"{name}.json"


def _url(settings: Settings, name: str) -> str | None:
    o = settings.orchestration
    return {
        "redis": redis_server.redis_url(settings),
        "prefect": o.prefect_url,
        "deployments": f"http://{o.host}:{o.runner_port}",
        "service": f"http://{settings.serving.host}:{settings.serving.port}",
    }.get(name)


def _launch(settings: Settings, name: str, log: IO[bytes], token: str) -> subprocess.Popen[bytes]:
    popen: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "stdout": log,
        "stderr": subprocess.STDOUT,
        "start_new_session": True,
    }
    if name == "service":
        # service_process builds its environment from ours: lend it the mark for the call.
        inherited = os.environ.get(MARK)
        os.environ[MARK] = token
        try:
            return service_process(settings, settings.serving.host, settings.serving.port, **popen)
        finally:
            if inherited is None:
                del os.environ[MARK]
            else:
                os.environ[MARK] = inherited
    o, project = settings.orchestration, str(settings.project_dir)
    bind = ["--host", o.host, "--port", str(o.prefect_port)]
    arguments = {
        "prefect": ["-m", "prefect", "server", "start", *bind],
        "deployments": [str(runner_file(settings)), "--project", project],
        "stream": ["-m", "maquette", "stream", "run", "--project", project],
    }
    env = {**os.environ, **prefect_env(settings), MARK: token}
    return subprocess.Popen(
        [sys.executable, *arguments[name]], cwd=settings.project_dir, env=env, **popen
    )


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _health(settings: Settings, name: str, age_s: float) -> str:
    """running, unready (alive, not ready) or starting, for a live process."""
    url = _url(settings, name)
    if name == "prefect":
        return "running" if _answers(f"{url}/api/health") else "starting"
    if name == "deployments":
        return "running" if _answers(f"{url}/health") else "starting"
    if name == "service":
        if _answers(f"{url}/readyz"):
            return "running"
        return "unready" if _answers(f"{url}/healthz") else "starting"
    return "running" if age_s >= SETTLE_S else "starting"


def _detail(settings: Settings, name: str, state: str) -> str:
    if name == "prefect":
        return "UI at /, API at /api"
    if name == "deployments" and state == "running":
        with contextlib.suppress(httpx.HTTPError, ValueError):
            count = httpx.post(f"{prefect_api_url(settings)}/deployments/count", timeout=2).json()
            return f"serving {count} deployments"
    if name == "service":
        if state == "unready":
            return "alive but not ready: no @production model yet, or Redis down"
        return "Swagger UI at /, POST /predict"
    if name == "stream":
        return "maquette stream run"
    return ""


# ---------------------------------------------------------------------------- processes


def _read_record(settings: Settings, name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(_record_path(settings, name).read_text()))
    except (OSError, ValueError):
        return None


def _process(record: dict[str, Any]) -> psutil.Process | None:
    """The recorded process when it still runs (same pid *and* start time), else None."""
    try:
        process = psutil.Process(record["pid"])
        if abs(process.create_time() - record["started"]) > 1:
            return None  # the pid now belongs to another process
        if process.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(process.pid, os.WNOHANG)  # our own child (started in-process): reap
            return None
        return process
    except psutil.Error:
        return None


def _alive(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    return False


def _members(record: dict[str, Any]) -> list[psutil.Process]:
    """Live processes of a component: its process group, and every process carrying its mark
    (BentoML workers start sessions of their own and outlive a killed leader)."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if process.create_time() < record["started"] - 1 or not _alive(process):
                continue
            if os.getpgid(process.pid) == record["pid"] or (
                record.get("token") and process.environ().get(MARK) == record["token"]
            ):
                members.append(process)
    return members


def _terminate(record: dict[str, Any], timeout_s: float) -> None:
    """SIGTERM to every member of the component, SIGKILL to whatever is left after timeout_s."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        members = _members(record)
        for process in members:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
        deadline = time.monotonic() + wait_s
        while any(_alive(p) for p in members) and time.monotonic() < deadline:
            time.sleep(0.1)
    _process(record)  # reaps the leader when it was our own child


def _start(settings: Settings, name: str) -> None:
    record = _read_record(settings, name)
    if record:  # it crashed or hangs: what it left may still hold the port
        _terminate(record, settings.orchestration.stop_timeout_s)
    log_path = _log_path(settings, name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _record_path(settings, name).parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    with log_path.open("ab") as log:
        stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
        log.write(f"\n--- maquette up: starting {name} at {stamp} UTC\n".encode())
        log.flush()
        proc = _launch(settings, name, log, token)
    record = {"pid": proc.pid, "started": psutil.Process(proc.pid).create_time(), "token": token}
    _record_path(settings, name).write_text(json.dumps(record))


def _component_status(settings: Settings, name: str) -> ComponentStatus:
    if name == "redis":
        return _redis_status(settings)
    record = _read_record(settings, name)
    log = _log_path(settings, name)
    url = _url(settings, name)
    if record is None:
        return ComponentStatus(name, "stopped", url, None, log if log.is_file() else None)
    process = _process(record)
    if process is None:
        return ComponentStatus(name, "crashed", url, record["pid"], log, "exited: see its log")
    age = time.time() - record["started"]
    state = _health(settings, name, age)
    if state == "starting" and age > settings.orchestration.start_timeout_s:
        state = "unhealthy"
    return ComponentStatus(name, state, url, process.pid, log, _detail(settings, name, state))


def _redis_status(settings: Settings) -> ComponentStatus:
    state = redis_server.status(settings)
    if not state.embedded:
        detail = "external (redis.url)" + ("" if state.running else ": does not answer")
        return ComponentStatus(
            "redis", "running" if state.running else "stopped", state.url, None, None, detail
        )
    log = state.data_dir / "redis.log" if state.data_dir else None
    if state.running:
        return ComponentStatus("redis", "running", state.url, state.pid, log, "embedded, AOF on")
    # redis-server removes its pid file on a clean shutdown: one left behind means it died.
    died = state.data_dir is not None and (state.data_dir / "redis.pid").is_file()
    return ComponentStatus("redis", "crashed" if died else "stopped", state.url, None, log)


def _failure(status: ComponentStatus, why: str) -> str:
    tail = ""
    if status.log and status.log.is_file():
        tail = "\n".join(status.log.read_text(errors="replace").splitlines()[-12:])
    return f"{status.name} {why}. The end of {status.log}:\n{tail}"


# ---------------------------------------------------------------------------- the API


def _names(settings: Settings, components: list[str] | None, recorded: bool) -> list[str]:
    names = list(components or settings.orchestration.components)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise ConfigError(
            f"unknown component(s): {', '.join(unknown)}.", f"Choose from {', '.join(COMPONENTS)}."
        )
    if recorded and components is None:  # also whatever still runs from an earlier setting
        names += [n for n in COMPONENTS if n not in names and _read_record(settings, n)]
    return names


@contextlib.contextmanager
def _exclusive(settings: Settings) -> Iterator[None]:
    """One `up` or `down` at a time per project (two would start the same component twice)."""
    lock = settings.state_dir / "run" / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def status(settings: Settings, components: list[str] | None = None) -> list[ComponentStatus]:
    """State, URL, pid and log of each component (the configured ones and any left running)."""
    return [_component_status(settings, name) for name in _names(settings, components, True)]


def require_project_files(settings: Settings, components: list[str]) -> None:
    """Raise ConfigError when the project lacks the flows or service these components run."""
    # Checked before anything starts: a missing file found halfway would leave the
    # components started before it running, and a demo would fail after training.
    if "deployments" in components:
        runner_file(settings)
    if "service" in components:
        service_target(settings)


def up(
    settings: Settings,
    components: list[str] | None = None,
    announce: Callable[[str], None] = lambda _: None,
) -> list[ComponentStatus]:
    """Start each component that is not running, dependencies first; wait until each answers.

    A component that fails does not stop the others (only those needing it); ComponentFailed
    at the end names every failure with the end of its log.
    """
    names = _names(settings, components, False)
    require_project_files(settings, names)
    with _exclusive(settings):
        return _up(settings, names, announce)


def _up(
    settings: Settings, names: list[str], announce: Callable[[str], None]
) -> list[ComponentStatus]:
    timeout = settings.orchestration.start_timeout_s
    waiting, started, failed = list(names), dict[str, float](), dict[str, str]()
    began = time.monotonic()
    while waiting:
        for name in list(waiting):
            needs = [n for n in NEEDS.get(name, ()) if n in names]
            if broken := [n for n in needs if n in failed]:
                failed[name] = f"{name} was not started because {broken[0]} failed."
                waiting.remove(name)
                continue
            if not all(_component_status(settings, n).is_up for n in needs):
                if time.monotonic() - began > timeout:
                    failed[name] = f"{name} was not started: {', '.join(needs)} never answered."
                    waiting.remove(name)
                continue  # its dependencies are still starting
            waiting.remove(name)
            current = _component_status(settings, name)
            if current.state in (*UP, "starting"):
                continue  # already running: left alone
            again = f" (it was {current.state})" if current.state != "stopped" else ""
            announce(f"starting {name}{again}")
            if name == "redis":
                redis_server.ensure_redis(settings)
            else:
                _start(settings, name)
            started[name] = time.monotonic()
        _check_progress(settings, started, failed, timeout)
        time.sleep(0.3 if waiting else 0)
    while pending := [n for n in started if n not in failed and not _is_up(settings, n)]:
        _check_progress(settings, {n: started[n] for n in pending}, failed, timeout)
        time.sleep(0.3)
    if failed:
        raise ComponentFailed(
            "\n\n".join(failed.values()),
            "Fix the cause shown in the log, then run `maquette up` again (`maquette status` "
            "shows what runs).",
        )
    return status(settings, names)


def _is_up(settings: Settings, name: str) -> bool:
    return _component_status(settings, name).is_up


def _check_progress(
    settings: Settings, started: dict[str, float], failed: dict[str, str], timeout_s: float
) -> None:
    """Record in `failed` each started component that exited or outlived the start timeout."""
    for name, began in started.items():
        if name in failed:
            continue
        current = _component_status(settings, name)
        if current.state in ("crashed", "stopped"):
            failed[name] = _failure(current, "exited while starting")
        elif not current.is_up and time.monotonic() - began > timeout_s:
            failed[name] = _failure(current, f"did not answer within {timeout_s:.0f}s")


def down(
    settings: Settings,
    components: list[str] | None = None,
    announce: Callable[[str], None] = lambda _: None,
) -> list[ComponentStatus]:
    """Stop the components in reverse order: SIGTERM, then SIGKILL after stop_timeout_s."""
    names = _names(settings, components, True)
    with _exclusive(settings):
        for name in sorted(names, key=COMPONENTS.index, reverse=True):
            _stop(settings, name, announce)
    return status(settings, names)


def _stop(settings: Settings, name: str, announce: Callable[[str], None]) -> None:
    if name == "redis":
        if settings.redis.url is not None:
            return  # an external Redis is not Maquette's to stop
        if redis_server.stop(settings):
            announce("stopped redis")
        data_dir = redis_server.status(settings).data_dir
        if data_dir and not redis_server.ping(redis_server.redis_url(settings)):
            (data_dir / "redis.pid").unlink(missing_ok=True)  # left behind by a crash
        return
    record = _read_record(settings, name)
    if record is not None:
        _terminate(record, settings.orchestration.stop_timeout_s)
        _record_path(settings, name).unlink(missing_ok=True)
        announce(f"stopped {name}")


@contextlib.contextmanager
def schedules_paused(settings: Settings, deployments: list[str]) -> Iterator[list[str]]:
    """Pause these deployments' schedules for a while (e.g. wall-clock materialization while
    the demo replays history); resumed on the way out. Yields those that exist."""
    from prefect.client.orchestration import get_client

    found: list[Any] = []
    with prefect_api(settings), get_client(sync_client=True) as client:
        for name in deployments:
            try:
                deployment = client.read_deployment_by_name(name)
            except Exception:  # not deployed (runner not started): nothing to pause
                continue
            client.set_deployment_paused_state(deployment.id, True)
            found.append(deployment)
        try:
            yield [d.name for d in found]
        finally:
            for deployment in found:
                client.set_deployment_paused_state(deployment.id, False)
