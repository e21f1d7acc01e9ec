"""The Prefect server's PostgreSQL: use the configured one, or initialize and run our own.

With `orchestration.database: postgresql` and no `database_url`, the platform runs a PostgreSQL
of its own (the component `postgres`): Debian's binaries (found on PATH or under
/usr/lib/postgresql/<version>/bin), a data folder initialized on first start with `initdb`,
password authentication (scram-sha-256) for the user `maquette` (its password generated into
`<state>/secrets/postgres_password`), TCP on loopback only, no unix socket. Prefect's tables go
into the database `prefect`, created when missing before the Prefect server starts.

PostgreSQL refuses to run as root. Run as root (a container, CI), Maquette runs it as
`orchestration.postgres_os_user` (Debian's `postgres`), and its data folder cannot be under the
state folder, which is private to root: it is then in that user's home
(`/var/lib/postgresql/maquette/<project>`), unless `postgres_data` names another.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psutil

from maquette.config import Settings
from maquette.data.secrets import generated_secret
from maquette.errors import ComponentFailed, ConfigError

INSTALL_HINT = (
    "Install PostgreSQL (`apt-get install postgresql`), or point "
    "MAQUETTE_ORCHESTRATION_DATABASE_URL at a PostgreSQL you run."
)
PASSWORD_SECRET = "postgres_password"  # <state>/secrets/postgres_password
USER = "maquette"
DATABASE = "prefect"
# The embedded server serves the Prefect server beside it, never other machines (initdb's
# pg_hba.conf admits loopback clients only): it binds here whatever orchestration.host says.
LOOPBACK = "127.0.0.1"
# Query options of a given URL that asyncpg takes; SQLAlchemy's own ones (e.g.
# prepared_statement_cache_size) would reach the server as unknown settings.
ASYNCPG_OPTIONS = ("ssl", "sslmode", "sslrootcert", "sslcert", "sslkey", "target_session_attrs")
DEBIAN_BINARIES = Path("/usr/lib/postgresql")


def uses_postgres(settings: Settings) -> bool:
    """True when the Prefect server keeps its state in PostgreSQL."""
    return settings.orchestration.database == "postgresql"


def is_embedded(settings: Settings) -> bool:
    """True when Maquette runs the PostgreSQL itself (postgresql, no database_url)."""
    return uses_postgres(settings) and settings.orchestration.database_url is None


def binary(name: str) -> Path:
    """`postgres` or `initdb`: from PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    versions = sorted(
        (p for p in DEBIAN_BINARIES.glob("*/bin") if (p / name).is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1] / name
    raise ConfigError(f"PostgreSQL's {name} was not found (PATH, {DEBIAN_BINARIES}).", INSTALL_HINT)


@dataclass(frozen=True)
class OsUser:
    """Who the embedded PostgreSQL runs as: this process's user, or os_user when that is root."""

    name: str
    uid: int
    gid: int
    home: Path

    @property
    def is_other(self) -> bool:
        return self.uid != os.geteuid()


def os_user(settings: Settings) -> OsUser:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return OsUser(me.pw_name, me.pw_uid, me.pw_gid, Path(me.pw_dir))
    name = settings.orchestration.postgres_os_user
    try:
        found = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(
            f"PostgreSQL refuses to run as root, and the user {name!r} it would run as "
            "(orchestration.postgres_os_user) does not exist.",
            "Install Debian's postgresql package (it creates `postgres`), name another user, "
            "or run Maquette as a user other than root.",
        ) from None
    if found.pw_uid == 0:
        raise ConfigError(
            f"orchestration.postgres_os_user {name!r} is root, which PostgreSQL refuses.",
            "Name an unprivileged user (Debian's `postgres`).",
        )
    return OsUser(name, found.pw_uid, found.pw_gid, Path(found.pw_dir))


def data_dir(settings: Settings) -> Path:
    """The embedded PostgreSQL's data folder (see the module's docstring)."""
    o = settings.orchestration
    if o.postgres_data is not None:
        return settings.path(o.postgres_data)
    user = os_user(settings)
    if not user.is_other:
        return settings.state_dir / "postgres"
    project = hashlib.sha1(str(settings.state_dir.resolve()).encode()).hexdigest()[:12]
    return user.home / "maquette" / f"{settings.project_dir.name}-{project}"


def password(settings: Settings) -> str:
    given = settings.orchestration.postgres_password
    return given.get_secret_value() if given else generated_secret(settings, PASSWORD_SECRET)


def connection_url(settings: Settings) -> str:
    """The SQLAlchemy URL Prefect's server is given (PREFECT_SERVER_DATABASE_CONNECTION_URL):
    it holds the password, so it goes into environments, never on a command line or a log."""
    given = settings.orchestration.database_url
    if given is not None:
        return given.get_secret_value()
    secret, port = quote(password(settings), safe=""), settings.orchestration.postgres_port
    return f"postgresql+asyncpg://{USER}:{secret}@{LOOPBACK}:{port}/{DATABASE}"


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    """A SQLAlchemy URL as asyncpg takes it (another database, if named)."""
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    if database is not None:
        parts = parts._replace(path=f"/{database}")
    kept = [(k, v) for k, v in parse_qsl(parts.query) if k in ASYNCPG_OPTIONS]
    return parts._replace(query=urlencode(kept)).geturl()


async def _query(dsn: str, sql: str, timeout_s: float) -> list[tuple[object, ...]]:
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        return [tuple(r) for r in await connection.fetch(sql, timeout=timeout_s)]
    finally:
        await connection.close(timeout=timeout_s)


def query(url: str, sql: str, timeout_s: float = 10.0) -> list[tuple[object, ...]]:
    """The rows of one SQL statement on the database of a SQLAlchemy/asyncpg URL."""
    return asyncio.run(_query(_asyncpg_dsn(url), sql, timeout_s))


def answers(settings: Settings, timeout_s: float = 2.0) -> bool:
    """True when the PostgreSQL answers a query as the user Prefect connects as. For the
    embedded one, on its `postgres` database (Prefect's may not exist yet)."""
    url = connection_url(settings)
    dsn = _asyncpg_dsn(url, "postgres" if is_embedded(settings) else None)
    try:
        return asyncio.run(_query(dsn, "SELECT 1", timeout_s)) == [(1,)]
    except Exception:  # refused, wrong password, starting up ("the database system is starting")
        return False


def ensure_database(settings: Settings) -> None:
    """Create the embedded PostgreSQL's database `prefect` when it is missing."""
    if not is_embedded(settings):
        return  # a PostgreSQL the user runs: its database is theirs to create
    dsn = _asyncpg_dsn(connection_url(settings), "postgres")
    import asyncpg

    found = asyncio.run(
        _query(dsn, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", 10.0)
    )
    if not found:
        # Two launchers at once (a restart racing `up`): the second finds it made.
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            asyncio.run(_query(dsn, f"CREATE DATABASE {DATABASE}", 30.0))


def _reachable_by(user: OsUser, folder: Path) -> Path | None:
    """The first folder on the way to `folder` that `user` cannot enter, if any."""
    groups = {user.gid, *(g for g in os.getgrouplist(user.name, user.gid))}
    for parent in [*reversed(folder.parents)]:
        if not parent.exists():
            return None  # created below, by us, for that user
        st = parent.stat()
        if st.st_uid == user.uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return parent
    return None


def initialize(settings: Settings) -> Path:
    """`initdb` the data folder on first start (user `maquette`, its password, scram-sha-256,
    UTF-8); returns the folder. A folder already initialized is left as it is."""
    data, user = data_dir(settings), os_user(settings)
    if (data / "PG_VERSION").is_file():
        return data
    if user.is_other:
        _parent_for(settings, user, data)
    else:
        data.parent.mkdir(parents=True, exist_ok=True)
    # The password reaches initdb in a file only its user reads, never on a command line;
    # handed over through its descriptor (a path could be swapped for a link meanwhile).
    fd, pwfile = tempfile.mkstemp(dir=data.parent, prefix=".pw-")
    try:
        if user.is_other:
            os.fchown(fd, user.uid, user.gid)
        with os.fdopen(fd, "w") as out:
            out.write(password(settings) + "\n")
        command = [
            str(binary("initdb")),
            "--pgdata", str(data),
            "--username", USER,
            "--pwfile", pwfile,
            "--auth", "scram-sha-256",
            "--encoding", "UTF8",
            "--no-locale",
        ]  # fmt: skip
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=data.parent,  # initdb wants a current folder its user can enter
            env=server_env(settings),  # not root's MAQUETTE_* (its user may read /proc)
            user=user.uid if user.is_other else None,
            group=user.gid if user.is_other else None,
            extra_groups=[] if user.is_other else None,
        )
    finally:
        Path(pwfile).unlink(missing_ok=True)
    if done.returncode != 0:
        raise ComponentFailed(
            f"initdb could not initialize {data}:\n{done.stdout}{done.stderr}",
            "Fix what initdb says; if the folder holds a broken start, remove it and run "
            "`maquette up` again.",
        )
    return data


def _parent_for(settings: Settings, user: OsUser, data: Path) -> None:
    """Run as root: the data folder's parent must be the PostgreSQL user's. The default one
    (in that user's home) is made for it; a folder the settings name is never handed over."""
    if (blocked := _reachable_by(user, data.parent)) is not None:
        raise ConfigError(
            f"PostgreSQL runs as {user.name!r} (it refuses root), who cannot enter {blocked} "
            f"on the way to its data folder {data}.",
            "Set orchestration.postgres_data to a folder that user can reach, or leave it "
            f"unset (then it is under {user.home}).",
        )
    parent = data.parent
    if settings.orchestration.postgres_data is None and not parent.exists():
        # ~postgres/maquette: one level below the user's home, made here and given to it.
        parent.mkdir(mode=0o700)
        os.chown(parent, user.uid, user.gid, follow_symlinks=False)
    st = parent.lstat() if parent.exists() else None
    if st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != user.uid:
        raise ConfigError(
            f"the folder {parent}, which is to hold PostgreSQL's data folder, is missing, a "
            f"link, or not owned by {user.name!r}, the user PostgreSQL runs as.",
            f"Create it owned by that user (`install -d -o {user.name} {parent}`), or leave "
            "orchestration.postgres_data unset.",
        )


def server_env(settings: Settings) -> dict[str, str]:
    """The embedded server's whole environment: it runs as another user, who may read it
    (in /proc), so nothing of the platform's (keys, passwords) is passed on."""
    user = os_user(settings)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    return env | {"HOME": str(user.home), "USER": user.name, "LOGNAME": user.name}


def server_command(settings: Settings) -> list[str]:
    """The embedded server in the foreground, for the supervisor: TCP on loopback only."""
    o = settings.orchestration
    return [
        str(binary("postgres")),
        "-D", str(data_dir(settings)),
        "-h", LOOPBACK,
        "-p", str(o.postgres_port),
        "-c", "unix_socket_directories=",
        "-c", "logging_collector=off",
    ]  # fmt: skip


def become_os_user(settings: Settings) -> None:
    """Drop root for the PostgreSQL user before exec (the launcher runs as the platform's
    user). Nothing to do when not root."""
    user = os_user(settings)
    if not user.is_other:
        return
    os.setgroups([])
    os.setgid(user.gid)
    os.setuid(user.uid)


@functools.cache  # `maquette status` and the console ask on every look: one subprocess
def version() -> str | None:
    with contextlib.suppress(OSError, ConfigError, subprocess.SubprocessError):
        done = subprocess.run(
            [str(binary("postgres")), "--version"], capture_output=True, text=True, timeout=10
        )
        found = re.search(r"\(PostgreSQL\) (\S+)", done.stdout)  # postgres (PostgreSQL) 15.18 (...)
        return found.group(1) if found else None
    return None


def postmaster_pid(settings: Settings) -> int | None:
    """The pid in the data folder's postmaster.pid, if that process is still a postgres
    working in this data folder (a pid left from a crash may be anyone's by now, another
    project's PostgreSQL included)."""
    data = data_dir(settings)
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        process = psutil.Process(pid)
        if process.name() == "postgres" and Path(process.cwd()) == data.resolve():
            return pid
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return None


def stop(settings: Settings, timeout_s: float = 10.0) -> bool:
    """Fast shutdown (SIGINT) of the embedded server, if it runs; SIGKILL after timeout_s.
    The supervisor stops it the same way; this is for one an earlier crash left running."""
    pid = postmaster_pid(settings)
    if pid is None:
        return False
    with contextlib.suppress(psutil.Error, OSError):
        process = psutil.Process(pid)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except psutil.TimeoutExpired:
            process.kill()
    return True
