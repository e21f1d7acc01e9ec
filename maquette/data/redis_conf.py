"""A redis-server's command line and its private redis.conf (the embedded server's, and the
throwaway servers of tests and benchmarks).

Every setting goes into the file, never on the command line, which any local user can read in
/proc: the password above all. The file is 0600 in a 0700 data folder and replaced atomically.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from maquette.errors import ConfigError

CONFIG_FILE = "redis.conf"


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def server_command(
    binary: Path,
    port: int,
    host: str,
    data_dir: Path,
    *,
    daemonize: bool,
    appendfsync: str = "everysec",
    password: str | None = None,
    maxmemory: str | None = None,
    disabled_commands: Sequence[str] = (),
) -> list[str]:
    """The command line of a redis-server persisting under `data_dir`: `[binary, redis.conf]`.

    Every setting goes into `<data_dir>/redis.conf`, written private (0600, in a 0700 folder)
    before the server starts: the password must not be in argv, which any local user can read.
    Without `password` the server takes anyone who can reach it (tests' throwaway servers);
    `maxmemory` comes with `noeviction` (writes beyond it fail, nothing is dropped);
    `disabled_commands` are renamed to nothing (the embedded server disables CONFIG, MODULE and
    DEBUG). The file is rewritten on every call: it always says what the settings say now."""
    if password is None and not is_loopback(host):
        raise ConfigError(
            f"a Redis bound to {host} without a password would take anyone on the network.",
            "Give it a password, or bind it to 127.0.0.1.",
        )
    lines = [
        ("port", str(port)),
        ("bind", host),
        ("protected-mode", "yes"),
        ("dir", str(data_dir)),
        ("appendonly", "yes"),
        ("appendfsync", appendfsync),
        ("daemonize", "yes" if daemonize else "no"),
        ("pidfile", str(data_dir / "redis.pid")),
        ("logfile", str(data_dir / "redis.log")),
        ("save", ""),
    ]
    if password is not None:
        lines.append(("requirepass", password))
    if maxmemory is not None:
        lines += [("maxmemory", maxmemory), ("maxmemory-policy", "noeviction")]
    text = "".join(f"{key} {_quoted(value)}\n" for key, value in lines)
    text += "".join(f'rename-command {name} ""\n' for name in disabled_commands)
    config = _write_private(data_dir, CONFIG_FILE, text)
    return [str(binary), str(config)]


def _quoted(value: str) -> str:
    """A value as redis.conf reads it: double-quoted, with backslash escapes."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _write_private(folder: Path, name: str, text: str) -> Path:
    """`folder/name` holding `text`, mode 0600 in a 0700 folder, replaced atomically (a server
    starting meanwhile reads the old file or the new one, never half of one)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)  # the AOF holds every prediction and feature: the owner's only
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")  # mkstemp: 0600, O_EXCL
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temp, folder / name)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return folder / name
