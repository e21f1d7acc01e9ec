"""The running platform: start, check and stop what `maquette up` keeps running, all on loopback.

    component     process                                          health check
    redis         redis-server (the embedded one; AOF on)          PING
    postgres      PostgreSQL for Prefect (database: postgresql)    a query as Prefect's user
    prefect       prefect server start, PREFECT_HOME in the state   GET /api/health
    deployments   <paths.flows>/deployments.py: Prefect `serve`     GET /health of the runner
    service       bentoml serve of <paths.bentos>/service.py        GET /readyz (/healthz: unready)
    stream        maquette stream run                               alive past orchestration.settle_s

A process supervisor of the project's own (supervisord, see `platform.supervisor`) runs them and
restarts any that exits, without anyone typing a command; `maquette up / status / down` drive it.
`up` returns once every component answers, and the supervisor outlives it. `status` reports
each component's state with its restart count and last exit; a component that kept failing to
start is "gave up" until the next `up`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from maquette.config import Settings
from maquette.data import postgres_server, redis_server
from maquette.data.secrets import redact
from maquette.errors import ComponentFailed, ConfigError
from maquette.platform import schedules, supervisor
from maquette.platform.flows import deployment_count, platform_prefect, prefect_api_url, runner_file
from maquette.platform.launch import COMPONENTS, forget_starts, prefect_env, stop_leftovers
from maquette.serving.server import service_target

__all__ = ["COMPONENTS", "prefect_api_url", "prefect_env"]
log = logging.getLogger("maquette.platform")
UP = ("running", "unready")  # states in which `up` leaves a component alone


@dataclass(frozen=True)
class ComponentStatus:
    """One line of `maquette status`."""

    name: str
    # running | unready | starting | restarting | unhealthy | gave up | crashed | stopped
    state: str
    url: str | None = None
    pid: int | None = None
    log: Path | None = None
    detail: str = ""
    restarts: int = 0  # restarts after a crash since the platform came up
    last_exit: str | None = None  # when and how the component last exited

    @property
    def is_up(self) -> bool:
        """Running, or alive and answering but not ready (a service without models)."""
        return self.state in UP


@contextlib.contextmanager
def prefect_api(settings: Settings) -> Iterator[str]:
    """Point this process's Prefect client at the platform's server, e.g. for run_deployment."""
    url = prefect_api_url(settings)
    with platform_prefect(settings, url):
        yield url


def run_deployment(
    settings: Settings, name: str, parameters: dict[str, Any] | None = None, timeout_s: float = 0
) -> Any:
    """Start FLOW/DEPLOYMENT (e.g. "train/<model>") on the platform; wait up to timeout_s."""
    from prefect.deployments import run_deployment as start

    with prefect_api(settings):
        return start(name, parameters=parameters, timeout=timeout_s, poll_interval=1)


# ---------------------------------------------------------------------------- health


def _address(settings: Settings, name: str) -> str | None:
    """The URL clients of the component use (the Redis one holds its password)."""
    o = settings.orchestration
    return {
        "redis": redis_server.store_url(settings),
        "postgres": postgres_server.connection_url(settings)
        if postgres_server.uses_postgres(settings)
        else None,
        "prefect": o.prefect_url,
        "deployments": f"http://{o.host}:{o.runner_port}",
        "service": f"http://{settings.serving.host}:{settings.serving.port}",
        "console": f"http://{settings.console.host}:{settings.console.port}",
    }.get(name)


def _url(settings: Settings, name: str) -> str | None:
    """The component's URL as `maquette status` shows it: credentials hidden."""
    url = _address(settings, name)
    return None if url is None else redact(url)


def _log(settings: Settings, name: str) -> Path:
    if name == "redis":
        return settings.state_dir / "redis" / "redis.log"  # redis-server writes its own log
    return supervisor.component_log(settings, name)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _health(settings: Settings, name: str, age_s: float) -> str:
    """running, unready (alive, not ready) or starting, for a live process."""
    url = _address(settings, name)
    if name == "redis":
        return "running" if redis_server.ping(str(url)) else "starting"
    if name == "postgres":
        return "running" if postgres_server.answers(settings) else "starting"
    if name == "prefect":
        return "running" if _answers(f"{url}/api/health") else "starting"
    if name == "deployments":
        return "running" if _answers(f"{url}/health") else "starting"
    if name == "console":
        return "running" if _answers(f"{url}/healthz") else "starting"
    if name == "service":
        if _answers(f"{url}/readyz"):
            return "running"
        return "unready" if _answers(f"{url}/healthz") else "starting"
    return "running" if age_s >= settings.orchestration.settle_s else "starting"


def _detail(settings: Settings, name: str, state: str) -> str:
    if name == "redis":
        return f"embedded, AOF appendfsync {settings.redis.appendfsync}"
    if name == "postgres":
        where = postgres_server.data_dir(settings)
        return f"embedded PostgreSQL {postgres_server.version() or ''}, data in {where}"
    if name == "prefect":
        kept = "PostgreSQL" if postgres_server.uses_postgres(settings) else "SQLite"
        return f"UI at /, API at /api; state in {kept}"
    if name == "deployments" and state == "running":
        count = deployment_count(settings)  # authenticated, with a CSRF token
        pool = settings.orchestration.work_pool
        if count is not None and pool is not None:
            who = (
                "a worker here (and any started elsewhere)"
                if settings.orchestration.local_worker
                else "workers started elsewhere (`maquette worker`)"
            )
            return f"{count} deployments on the work pool {pool}, run by {who}"
        if count is not None:
            return f"serving {count} deployments"
    if name == "service":
        if state == "unready":
            return "alive but not ready: no @production model yet, or Redis down"
        return "Swagger UI at /, POST /predict"
    if name == "stream":
        return "maquette stream run"
    if name == "console":
        return "models, versions, aliases, platform status (maquette ui)"
    return ""


def _component_status(
    settings: Settings, name: str, program: supervisor.ProgramInfo | None
) -> ComponentStatus:
    url, log = _url(settings, name), _log(settings, name)
    if name == "redis" and not redis_server.is_embedded(settings):
        answering = redis_server.answers(settings)
        given = "redis.cluster" if settings.redis.cluster else "redis.url"
        detail = f"external ({given})" + ("" if answering else ": does not answer")
        return ComponentStatus(name, "running" if answering else "stopped", url, None, None, detail)
    if name == "postgres" and not postgres_server.is_embedded(settings):
        answering = postgres_server.answers(settings)
        detail = "external (orchestration.database_url)" + (
            "" if answering else ": does not answer"
        )
        return ComponentStatus(name, "running" if answering else "stopped", url, None, None, detail)
    if program is None:
        return _unsupervised_status(settings, name, url, log)
    state, pid, detail = "stopped", None, ""
    if program.state == supervisor.RUNNING and program.pid:
        age = time.time() - (program.started or time.time())
        state, pid = _health(settings, name, age), program.pid
        if state == "running" and _still_launching(program.pid):
            state = "starting"  # the launcher waits (backoff, dependencies): not the component yet
        if state == "starting" and age > settings.orchestration.start_timeout_s:
            state = "unhealthy"
        detail = _detail(settings, name, state)
    elif program.state in supervisor.STARTING:
        state = "restarting" if program.restarts or program.state == "BACKOFF" else "starting"
        detail = program.error
    elif program.gave_up:
        state = "gave up"
        detail = "kept crashing: see its log; `maquette up` tries again"
    elif program.state == "EXITED":
        state = "restarting"  # exited unexpectedly: supervisord restarts it within a second
    elif program.state == "STOPPING":
        state = "stopping"
    elif name == "redis":  # stopped here: maybe started by hand, or another's on its port
        return _unsupervised_status(settings, name, url, log)
    return ComponentStatus(name, state, url, pid, log, detail, program.restarts, program.last_exit)


def _still_launching(pid: int) -> bool:
    """True while the supervised process is still the launcher, not yet the component."""
    with contextlib.suppress(psutil.Error):
        return "maquette.platform.launch" in psutil.Process(pid).cmdline()
    return False


def _unsupervised_status(
    settings: Settings, name: str, url: str | None, log: Path
) -> ComponentStatus:
    """A component the supervisor does not run: stopped, or an embedded Redis started by hand."""
    # In use but refusing our password: another project's, or one an older Maquette left open.
    if name == "redis" and redis_server.port_in_use(settings):
        if not redis_server.is_ours(settings):
            why = "the port answers, but not with this project's Redis: set redis.port"
            return ComponentStatus(name, "stopped", url, None, log, why)
        return ComponentStatus(
            name,
            "running",
            url,
            redis_server.status(settings).pid,
            log,
            "embedded, started by `maquette redis start` (not supervised until `maquette up`)",
        )
    return ComponentStatus(name, "stopped", url, None, log if log.is_file() else None)


def _failure(status: ComponentStatus, why: str) -> str:
    tail = ""
    if status.log and status.log.is_file():
        tail = "\n".join(status.log.read_text(errors="replace").splitlines()[-12:])
    return f"{status.name} {why}. The end of {status.log}:\n{tail}"


# ---------------------------------------------------------------------------- the API


def _names(settings: Settings, components: list[str] | None, known: bool) -> list[str]:
    names = list(components or settings.orchestration.components)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise ConfigError(
            f"unknown component(s): {', '.join(unknown)}.", f"Choose from {', '.join(COMPONENTS)}."
        )
    if not postgres_server.uses_postgres(settings):
        if components is not None and "postgres" in components:
            raise ConfigError(
                "the component postgres runs the Prefect server's PostgreSQL, and "
                "orchestration.database is sqlite.",
                "Set orchestration.database: postgresql to keep Prefect's state in PostgreSQL.",
            )
        names = [n for n in names if n != "postgres"]
    elif "prefect" in names and "postgres" not in names:
        names.append("postgres")  # the Prefect server's own database comes with it
    if known and components is None:  # also whatever the supervisor runs from an earlier setting
        names += [n for n in supervisor.programs(settings) if n not in names]
    return sorted(names, key=COMPONENTS.index)


@contextlib.contextmanager
def _exclusive(settings: Settings) -> Iterator[None]:
    """One `up` or `down` at a time per project (two would start the same component twice)."""
    lock = supervisor.run_dir(settings) / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def status(settings: Settings, components: list[str] | None = None) -> list[ComponentStatus]:
    """State, URL, pid, log, restarts and last exit of each component (the configured ones and
    any the supervisor still runs)."""
    programs = supervisor.programs(settings)
    return [
        _component_status(settings, name, programs.get(name))
        for name in _names(settings, components, True)
    ]


def require_project_files(settings: Settings, components: list[str]) -> None:
    """Raise ConfigError when the project lacks the flows or service these components run."""
    # Checked before anything starts: a missing file found halfway would leave the
    # components started before it running, and a demo would fail after training.
    if "deployments" in components:
        runner_file(settings)
    if "service" in components:
        service_target(settings)


def _supervised(settings: Settings, names: list[str]) -> list[str]:
    """The components the supervisor runs: all but an external Redis (or cluster) and an
    external PostgreSQL."""
    external = {
        "redis": not redis_server.is_embedded(settings),
        "postgres": not postgres_server.is_embedded(settings),
    }
    return [n for n in names if not external.get(n, False)]


def up(
    settings: Settings,
    components: list[str] | None = None,
    announce: Callable[[str], None] = lambda _: None,
    wait: bool = True,
) -> list[ComponentStatus]:
    """Start each component that is not running and wait until each answers; from then on the
    project's supervisor restarts any that exits.

    A component that fails does not stop the others; ComponentFailed at the end names every
    failure with the end of its log. `wait=False` returns once they are started, for work to
    go on while they load; `wait_until_up` then waits for them.
    """
    names = _names(settings, components, False)
    require_project_files(settings, names)
    with _exclusive(settings):
        if not redis_server.is_embedded(settings) and "redis" in names:
            redis_server.ensure_redis(settings)  # external: it must answer, it is not ours
        if "postgres" in names and not postgres_server.is_embedded(settings):
            _external_postgres_answers(settings)
        # Every component the supervisor already knows stays in its config, but a PostgreSQL
        # of its own that the settings no longer ask for (sqlite now, or a database_url).
        known = [n for n in supervisor.programs(settings) if n not in names]
        if "postgres" in known and not postgres_server.is_embedded(settings):
            announce("stopping the embedded postgres: orchestration.database no longer uses it")
            supervisor.stop_program(settings, "postgres")
            known.remove("postgres")
        supervisor.start(
            settings, sorted({*_supervised(settings, names), *known}, key=COMPONENTS.index)
        )
        started = _start_programs(settings, _supervised(settings, names), announce)
        if wait:
            _wait_until_up(settings, started)
    return status(settings, names)


def _external_postgres_answers(settings: Settings) -> None:
    if not postgres_server.answers(settings, timeout_s=5.0):
        raise ComponentFailed(
            f"the PostgreSQL of orchestration.database_url ({_url(settings, 'postgres')}) does "
            "not answer a query as its user.",
            "Check that it runs, that the URL's user, password and database are right (the "
            "database must exist), then run `maquette up` again.",
        )


def wait_until_up(settings: Settings, components: list[str]) -> list[ComponentStatus]:
    """Wait (up to `orchestration.start_timeout_s`) until each of these started components
    answers; ComponentFailed names those that stopped or did not answer, with their logs."""
    now = time.monotonic()
    _wait_until_up(settings, dict.fromkeys(_supervised(settings, components), now))
    return status(settings, components)


def _start_programs(
    settings: Settings, names: list[str], announce: Callable[[str], None]
) -> dict[str, float]:
    programs = supervisor.programs(settings)
    started: dict[str, float] = {}
    for name in names:
        current = _component_status(settings, name, programs.get(name))
        if current.state in (*UP, "starting", "restarting", "unhealthy"):
            continue  # running, or the supervisor is on it
        again = f" (it was {current.state})" if current.state != "stopped" else ""
        announce(f"starting {name}{again}")
        if name == "redis":
            _hand_redis_to_the_supervisor(settings, announce)
        forget_starts(settings, name)
        supervisor.start_program(settings, name)
        started[name] = time.monotonic()
    return started


def _hand_redis_to_the_supervisor(settings: Settings, announce: Callable[[str], None]) -> None:
    """An embedded Redis started by hand (`maquette redis start`) is stopped (its AOF keeps the
    data) and started again under the supervisor, which then owns it."""
    redis_server.mark_supervised(settings, False)
    if redis_server.port_in_use(settings):  # ours (with or without a password) or another's
        if not redis_server.is_ours(settings):  # another project's Redis, or another program
            raise ComponentFailed(
                f"redis could not be started: port {settings.redis.port} is taken by another "
                "program (a Redis that is not this project's, or not a Redis at all).",
                "Set redis.port in maquette.yaml (or MAQUETTE_REDIS_PORT) to a free port, then "
                "run `maquette up` again.",
            )
        announce("moving the embedded redis under the supervisor")
        with contextlib.suppress(redis.RedisError):
            redis_server.stop(settings)
    redis_server.mark_supervised(settings, True)


def _wait_until_up(settings: Settings, started: dict[str, float]) -> None:
    timeout = settings.orchestration.start_timeout_s
    failed: dict[str, str] = {}
    while pending := [n for n in started if n not in failed]:
        statuses = {s.name: s for s in status(settings, pending)}
        for name in pending:
            current = statuses[name]
            if current.is_up:
                started.pop(name)
            elif current.state in ("gave up", "stopped"):
                failed[name] = _failure(current, "could not be started")
            elif time.monotonic() - started[name] > timeout:
                failed[name] = _failure(current, f"did not answer within {timeout:.0f}s")
        time.sleep(0.3)
    if failed:
        raise ComponentFailed(
            "\n\n".join(failed.values()),
            "Fix the cause shown in the log, then run `maquette up` again (`maquette status` "
            "shows what runs).",
        )


def down(
    settings: Settings,
    components: list[str] | None = None,
    announce: Callable[[str], None] = lambda _: None,
) -> list[ComponentStatus]:
    """Stop the components in reverse order (SIGTERM, SIGKILL after stop_timeout_s); with no
    components named, stop the supervisor too."""
    names = _names(settings, components, True)
    with _exclusive(settings):
        running = supervisor.is_running(settings)
        for name in reversed(_supervised(settings, names)):
            if running and supervisor.stop_program(settings, name):
                announce(f"stopped {name}")
            stop_leftovers(settings, name, settings.orchestration.stop_timeout_s)
            if name == "redis":  # redis-server overwrites its environment: no mark to find
                redis_server.mark_supervised(settings, False)
                if redis_server.is_ours(settings):
                    redis_server.stop(settings)
        if running and components is None:
            supervisor.shutdown(settings)
    return status(settings, names)


@contextlib.contextmanager
def schedules_paused(settings: Settings, deployments: list[str]) -> Iterator[list[str]]:
    """Hold these deployments' schedules paused (e.g. the wall-clock materialization while the
    demo trains and replays history); resumed on the way out. Yields the names held.

    Those deployed are paused now; the runner creates the others paused if it starts (or
    restarts) before the hold ends, so name them before starting the runner. A name the
    server does not know is skipped; any other error (server down, a malformed name) raises.
    """
    schedules.hold_schedules(settings, deployments)
    try:
        _set_paused(settings, deployments, True)
        yield list(deployments)
    except BaseException:
        # The body's error is the one to see; a resume that fails too (the server went away
        # with it) is logged, not raised over it.
        schedules.release_schedules(settings)
        try:
            _set_paused(settings, deployments, False)
        except Exception as resume:
            log.warning("could not resume the schedules of %s: %s", deployments, resume)
        raise
    # Released first: a runner restarting from here on creates them active.
    schedules.release_schedules(settings)
    _set_paused(settings, deployments, False)


def _set_paused(settings: Settings, deployments: list[str], paused: bool) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with prefect_api(settings), get_client(sync_client=True) as client:
        for name in deployments:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:  # not deployed (yet): the runner creates it paused if held
                continue
            if paused:
                client.pause_deployment(deployment.id)  # also deletes its runs waiting to start
            else:
                client.resume_deployment(deployment.id)
