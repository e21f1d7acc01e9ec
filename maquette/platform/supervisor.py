"""The platform's process supervisor: one supervisord per project, driven over its XML-RPC API.

supervisord (the `supervisor` package) keeps the components running: it restarts a component
that exits, at once when it had been running, after 1, 2, 3... seconds when it keeps failing to
start, and gives it up (FATAL) after `orchestration.start_retries` failed starts in a row. Its
config, socket and log live in the project's state folder, so two projects never share one:

    <state>/run/supervisord.conf     written from the settings by every `maquette up`
    <state>/run/supervisor.sock      its API (a unix socket in a 0700 folder: this user only)
    <state>/logs/supervisord.log     spawns, exits and give-ups: restart counts come from here
    <state>/logs/<component>.log     each component's output

Each program runs `python -m maquette.platform.launch COMPONENT --project DIR`, which prepares
the component's environment from the settings and then becomes the component.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maquette.config import Settings
from maquette.data.secrets import write_private
from maquette.errors import ComponentFailed
from maquette.serving.server import bentoml_home

# The environment supervisord (and so every component) is started with leaves these out: Feast
# points PROMETHEUS_MULTIPROC_DIR and PROMETHEUS_MULTIPROCESS_DIR at a temporary folder of the
# process that imported it, which is gone once `maquette up` exits: inherited, every flow run
# would die on `import feast`, and two projects would share one metrics folder.
# PREFECT_* and BENTOML_* of the shell that ran `up` are left out as well: the project's
# settings give the components their Prefect server, home and BentoML store, and a stray
# PREFECT_API_URL, profile or database URL would point them at someone else's.
DROPPED_ENV_PREFIXES = ("PROMETHEUS_MULTIPROC", "PREFECT_", "BENTOML_")


def inherited_env() -> dict[str, str]:
    """This process's environment without what must not reach the components (see
    DROPPED_ENV_PREFIXES)."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(DROPPED_ENV_PREFIXES)}


# Exit code of the launcher when a component crash-looped: supervisord then leaves it stopped.
GAVE_UP_EXIT = 75
# supervisord's names for a program's states, grouped the way `maquette status` reports them.
RUNNING, STARTING = "RUNNING", ("STARTING", "BACKOFF")
GAVE_UP, STOPPED = "FATAL", ("STOPPED", "EXITED", "UNKNOWN")
# Lines of supervisord.log about a program: spawns, exits (expected or not) and give-ups.
_EXIT = re.compile(r"^(\S+ \S+) \w+ exited: (\S+) \((.*); (not expected|expected)\)$")
_GAVE_UP = re.compile(r"^(\S+ \S+) \w+ gave up: (\S+) ")
_STARTED = re.compile(r"^\S+ \S+ \w+ supervisord started with pid")


@dataclass(frozen=True)
class ProgramInfo:
    """What supervisord knows about one component, plus its history from supervisord.log."""

    name: str
    state: str  # RUNNING, STARTING, BACKOFF, FATAL, STOPPED, EXITED, ...
    pid: int | None
    started: float | None  # epoch seconds of the current process's start
    restarts: int  # unexpected exits since supervisord started
    last_exit: str | None  # e.g. "2026-12-01 23:30:05 terminated by SIGKILL"
    error: str  # why a start failed (supervisord's spawnerr)
    exit_status: int | None = None  # of the last exit

    @property
    def gave_up(self) -> bool:
        """Given up: failing to start again and again (supervisord), or crash-looping (launch)."""
        return self.state == GAVE_UP or (
            self.state == "EXITED" and self.exit_status == GAVE_UP_EXIT
        )


def run_dir(settings: Settings) -> Path:
    return settings.state_dir / "run"


def config_path(settings: Settings) -> Path:
    return run_dir(settings) / "supervisord.conf"


def log_path(settings: Settings) -> Path:
    return settings.state_dir / "logs" / "supervisord.log"


def component_log(settings: Settings, name: str) -> Path:
    return settings.state_dir / "logs" / f"{name}.log"


def socket_path(settings: Settings) -> Path:
    """The API socket: in the state folder, or a short private folder when that path is too
    long for a unix socket (108 bytes)."""
    path = run_dir(settings) / "supervisor.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(settings.state_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"maquette-{os.getuid()}" / f"{digest}.sock"


def component_mark(settings: Settings, name: str) -> str:
    """A value every process of one project's component carries in MAQUETTE_COMPONENT, children
    included, so leftovers of a crashed incarnation can be found and stopped."""
    digest = hashlib.sha1(str(settings.state_dir.resolve()).encode()).hexdigest()[:12]
    return f"{digest}:{name}"


def overrides_path(settings: Settings) -> Path:
    return run_dir(settings) / "environment.json"


def _write_overrides(settings: Settings) -> str:
    """Save the MAQUETTE_* variables `up` runs with, for the launcher; returns their digest."""
    # A file rather than supervisord's `environment=`, whose parser cannot carry every value
    # (quotes, JSON); 0600, since a value may be a secret (serving.api_key).
    overrides = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MAQUETTE_")}
    # With `registry.bentoml_home: null`, the store is the BENTOML_HOME of the shell that ran
    # `up` (BENTOML_* is not passed on as such): resolved here, where that shell's value is.
    overrides["BENTOML_HOME"] = bentoml_home(settings)
    text = json.dumps(overrides, sort_keys=True)
    write_private(overrides_path(settings), text)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _program(settings: Settings, name: str, digest: str) -> str:
    o = settings.orchestration
    launcher = [sys.executable, "-m", "maquette.platform.launch", name]
    arguments = [
        "--project",
        str(settings.project_dir),
        "--environment",
        str(overrides_path(settings)),
    ]
    command = shlex.join([*launcher, *arguments])
    log = component_log(settings, name)
    return "\n".join(
        [
            f"[program:{name}]",
            f"command={_escape(command)}",
            # Components read the settings `up` read (the file above); when those change, the
            # program changes too, and `up` restarts it.
            f'environment=MAQUETTE_OVERRIDES_DIGEST="{digest}"',
            f"directory={_escape(str(settings.project_dir))}",
            "autostart=false",
            # Restarted whatever its exit, except the launcher's own "gave up" code.
            "autorestart=unexpected",
            f"exitcodes={GAVE_UP_EXIT}",
            f"startsecs={o.settle_s}",
            f"startretries={o.start_retries}",
            # The whole process group gets the signal: workers and flow runs stop with it.
            "stopasgroup=true",
            "killasgroup=true",
            # PostgreSQL's SIGTERM waits for every client to leave; SIGINT is its fast shutdown.
            *(["stopsignal=INT"] if name == "postgres" else []),
            f"stopwaitsecs={max(1, round(o.stop_timeout_s))}",
            "redirect_stderr=true",
            f"stdout_logfile={_escape(str(log))}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=2",
        ]
    )


def _escape(value: str) -> str:
    return value.replace("%", "%%")  # supervisord expands %(name)s in values


def write_config(settings: Settings, names: list[str]) -> Path:
    """supervisord.conf for these components; returns its path."""
    sock = socket_path(settings)
    for folder in (run_dir(settings), sock.parent, log_path(settings).parent):
        folder.mkdir(parents=True, exist_ok=True)
    sock.parent.chmod(0o700)  # the socket's folder: nobody else may drive the supervisor
    digest = _write_overrides(settings)
    sections = [
        "[unix_http_server]",
        f"file={_escape(str(sock))}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={_escape(str(log_path(settings)))}",
        "logfile_maxbytes=5MB",
        "logfile_backups=2",
        f"pidfile={_escape(str(run_dir(settings) / 'supervisord.pid'))}",
        f"directory={_escape(str(settings.project_dir))}",
        "loglevel=info",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        *[_program(settings, name, digest) + "\n" for name in names],
    ]
    path = config_path(settings)
    path.write_text("\n".join(sections))
    return path


def api(settings: Settings) -> Any:
    """An XML-RPC proxy of the project's supervisord (`.supervisor.getState()`, ...)."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path(settings)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def is_running(settings: Settings) -> bool:
    """True when the project's supervisord answers on its socket."""
    if not socket_path(settings).exists():
        return False
    try:
        return bool(api(settings).supervisor.getState()["statename"] == "RUNNING")
    except (OSError, xmlrpc.client.Error):
        return False


def start(settings: Settings, names: list[str], timeout_s: float = 20.0) -> None:
    """Write the config and run supervisord (or make a running one pick up the new config)."""
    write_config(settings, names)
    if is_running(settings):
        _apply_config(settings)
        return
    env = inherited_env()
    socket_path(settings).unlink(missing_ok=True)  # left by a supervisord that was killed
    command = [sys.executable, "-m", "supervisor.supervisord", "-c", str(config_path(settings))]
    # supervisord daemonizes itself: the command returns once it runs in the background.
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    deadline = time.monotonic() + timeout_s
    while not is_running(settings):
        if result.returncode != 0 or time.monotonic() > deadline:
            raise ComponentFailed(
                f"the process supervisor (supervisord) did not start: "
                f"{(result.stderr or result.stdout).strip() or 'no answer on its socket'}",
                f"Look at {log_path(settings)} for the reason.",
            )
        time.sleep(0.1)


def _apply_config(settings: Settings) -> None:
    """`supervisorctl update`: add new programs, replace changed ones (those that ran run
    again, with the new config), drop removed ones."""
    proxy = api(settings)
    [[added, changed, removed]] = proxy.supervisor.reloadConfig()
    states = {info["name"]: info["statename"] for info in proxy.supervisor.getAllProcessInfo()}
    for name in [*changed, *removed]:
        with contextlib.suppress(xmlrpc.client.Fault):
            proxy.supervisor.stopProcess(name, True)
        proxy.supervisor.removeProcessGroup(name)
    for name in [*changed, *added]:
        proxy.supervisor.addProcessGroup(name)
    for name in changed:
        if states.get(name) in (RUNNING, *STARTING):
            start_program(settings, name)


def start_program(settings: Settings, name: str) -> None:
    """Ask supervisord to start a component (returns at once; it keeps it running from then)."""
    try:
        api(settings).supervisor.startProcess(name, False)
    except xmlrpc.client.Fault as fault:
        if "ALREADY_STARTED" not in fault.faultString:
            raise


def stop_program(settings: Settings, name: str) -> bool:
    """Stop a component and wait for it (SIGTERM, SIGKILL after stop_timeout_s); False when it
    was not running."""
    try:
        return bool(api(settings).supervisor.stopProcess(name, True))
    except xmlrpc.client.Fault as fault:
        if "NOT_RUNNING" in fault.faultString or "BAD_NAME" in fault.faultString:
            return False
        raise


def shutdown(settings: Settings, timeout_s: float = 30.0) -> None:
    """Stop supervisord itself (after its programs); returns once its process has exited."""
    # Its API answers SHUTDOWN at once, and it removes its socket and pid file on the way
    # out: a new supervisord started before that would lose both. Wait for the process.
    pidfile = run_dir(settings) / "supervisord.pid"
    try:
        pid: int | None = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pid = None
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        api(settings).supervisor.shutdown()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (
        is_running(settings) or (pid is not None and _alive(pid))
    ):
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (its parent, `up`, never waited) has exited for our purpose.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def programs(settings: Settings) -> dict[str, ProgramInfo]:
    """Every component supervisord knows, with restart counts and last exits; {} when it is
    not running."""
    if not is_running(settings):
        return {}
    try:
        infos = api(settings).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error):
        return {}
    history = _history(log_path(settings))
    found = {}
    for info in infos:
        name = info["name"]
        restarts, last_exit = history.get(name, (0, None))
        found[name] = ProgramInfo(
            name=name,
            state=info["statename"],
            pid=info["pid"] or None,
            started=float(info["start"]) or None,
            restarts=restarts,
            last_exit=last_exit,
            error=info.get("spawnerr") or "",
            exit_status=info.get("exitstatus"),
        )
    return found


def _history(log: Path) -> dict[str, tuple[int, str | None]]:
    """Per program: unexpected exits since supervisord last started, and the last exit."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    begin = max((i for i, line in enumerate(lines) if _STARTED.match(line)), default=0)
    counts: dict[str, int] = {}
    last: dict[str, str] = {}
    for line in lines[begin:]:
        if found := _EXIT.match(line):
            when, name, reason, expected = found.groups()
            if expected == "not expected":
                counts[name] = counts.get(name, 0) + 1
                last[name] = f"{when.split(',')[0]} {reason}"
            elif reason == f"exit status {GAVE_UP_EXIT}":
                last[name] = f"{when.split(',')[0]} gave up after repeated crashes"
            else:
                last[name] = f"{when.split(',')[0]} stopped ({reason})"
        elif found := _GAVE_UP.match(line):
            when, name = found.groups()
            last[name] = f"{when.split(',')[0]} gave up after repeated failed starts"
    return {name: (counts.get(name, 0), last.get(name)) for name in {*counts, *last}}
