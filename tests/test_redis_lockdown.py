"""The embedded Redis is locked down: a password every client carries and nobody is shown,
CONFIG/MODULE/DEBUG disabled, a memory limit, no open non-loopback bind; a server an older
Maquette left open is retired."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from feast.infra.online_stores.redis import RedisOnlineStore
from typer.testing import CliRunner

from maquette.cli import app
from maquette.config import Settings, load_settings
from maquette.data import redis_server
from maquette.data.secrets import secrets_dir
from maquette.errors import ConfigError, StoreUnavailable
from maquette.features import online_store
from maquette.features.layer import repo_config
from tests.conftest import free_port


def _project(folder: Path, **redis_settings: object) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"  {k}: {v}\n" for k, v in {"port": free_port(), **redis_settings}.items())
    (folder / "maquette.yaml").write_text(f"redis:\n{lines}")
    return load_settings(folder)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Settings]:
    """A project whose embedded Redis runs (2 MB maxmemory, so a flood is quick to show)."""
    settings = _project(tmp_path, maxmemory="2mb")
    redis_server.ensure_redis(settings)
    yield settings
    redis_server.stop(settings)


def _address(settings: Settings) -> dict[str, object]:
    return {"host": settings.redis.host, "port": settings.redis.port, "socket_timeout": 5}


def test_embedded_redis_wants_the_password_and_refuses_a_wrong_one(embedded: Settings) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(**_address(embedded)).set("open", "door")  # type: ignore[arg-type]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(password="guess", **_address(embedded)).ping()  # type: ignore[arg-type]
    password = (secrets_dir(embedded) / "redis_password").read_text().strip()
    assert redis.Redis(password=password, **_address(embedded)).ping()  # type: ignore[arg-type]
    assert redis.Redis.from_url(redis_server.redis_url(embedded)).ping()


@pytest.mark.parametrize(
    "command", [("CONFIG", "SET", "dir", "/tmp"), ("MODULE", "LIST"), ("DEBUG", "SLEEP", "0")]
)
def test_file_writing_and_debug_commands_are_unknown(
    embedded: Settings, command: tuple[str, ...]
) -> None:
    client = redis.Redis.from_url(redis_server.redis_url(embedded))
    with pytest.raises(redis.ResponseError, match="unknown command"):
        client.execute_command(*command)


def test_a_write_beyond_maxmemory_is_refused_not_evicted(embedded: Settings) -> None:
    client = redis.Redis.from_url(redis_server.redis_url(embedded))
    assert client.info("memory")["maxmemory_policy"] == "noeviction"
    assert client.info("memory")["maxmemory"] == 2 * 1024 * 1024
    client.set("kept", "yes")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        for i in range(8):
            client.set(f"flood:{i}", b"x" * 512 * 1024)
    assert client.get("kept") == b"yes"  # noeviction: what was there stays


def test_the_password_is_in_a_private_file_not_on_the_command_line(embedded: Settings) -> None:
    password = redis_server.embedded_password(embedded)
    pid = redis_server.status(embedded).pid
    assert pid is not None
    assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    data_dir = embedded.state_dir / "redis"
    config = data_dir / redis_server.CONFIG_FILE
    assert f'requirepass "{password}"' in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700  # the AOF: every feature, prediction


def test_clients_get_the_password_and_nothing_shown_has_it(embedded: Settings) -> None:
    password = redis_server.embedded_password(embedded)
    url = redis_server.redis_url(embedded)
    assert url == f"redis://:{password}@127.0.0.1:{embedded.redis.port}/0"
    feast = repo_config(embedded).online_store.connection_string
    assert feast == f"127.0.0.1:{embedded.redis.port},password={password}"
    client = RedisOnlineStore()._get_client(repo_config(embedded).online_store)
    assert client.ping()  # Feast's own client authenticates

    shown = [
        str(redis_server.unreachable(embedded, ConnectionError(f"lost {url}"))),
        redis_server.status(embedded).url,
    ]
    runner = CliRunner()
    for args in (["redis", "status", "--json"], ["status"], ["redis", "start"]):
        # `status` exits 1 here (the other components are down); its table is what counts.
        result = runner.invoke(app, [*args, "--project", str(embedded.project_dir)])
        assert "127.0.0.1" in result.output, result.output
        shown.append(result.output)
    for text in shown:
        assert password not in text
    assert "redis://***@127.0.0.1" in shown[0]


def test_feast_gets_passwords_it_would_misread_quoted_and_a_comma_refused() -> None:
    parse = RedisOnlineStore._parse_connection_string
    for password in ("123", "true", "null", 'a"b', "p w"):
        url = f"redis://:{quote(password, safe='')}@h:7/0"
        _, params = parse(online_store.feast_connection_string(url))
        assert params["password"] == password
    with pytest.raises(ConfigError, match="comma"):
        online_store.feast_connection_string("redis://:a%2Cb@h:7/0")


def test_a_non_loopback_bind_needs_a_password_of_the_users_own(tmp_path: Path) -> None:
    settings = _project(tmp_path / "open", host="0.0.0.0")
    with pytest.raises(ConfigError, match="not loopback") as caught:
        redis_server.embedded_command(settings)
    assert "MAQUETTE_REDIS_PASSWORD" in caught.value.remedy
    chosen = _project(tmp_path / "chosen", host="0.0.0.0", password="Chosen-by-me")
    command = redis_server.embedded_command(chosen)
    assert "Chosen-by-me" not in " ".join(command)
    assert 'requirepass "Chosen-by-me"' in Path(command[1]).read_text()


def _open_server(settings: Settings, data_dir: Path) -> None:
    """A Redis without a password on the project's port, as Maquette started it before."""
    command = redis_server.server_command(
        redis_server.redis_server_binary(),
        settings.redis.port,
        "127.0.0.1",
        data_dir,
        daemonize=True,
    )
    subprocess.run(command, check=True)
    redis_server.wait_until_ready(f"redis://127.0.0.1:{settings.redis.port}/0", 10)


def test_an_open_redis_left_by_an_older_maquette_is_restarted_locked(tmp_path: Path) -> None:
    settings = _project(tmp_path)
    _open_server(settings, settings.state_dir / "redis")
    redis.Redis(port=settings.redis.port).set("kept", "yes")
    redis.Redis(port=settings.redis.port).bgrewriteaof()
    try:
        redis_server.mark_supervised(settings, True)  # `maquette up` would restart it open
        with pytest.raises(StoreUnavailable, match="older Maquette") as caught:
            redis_server.ensure_redis(settings)
        assert "maquette down --component redis" in caught.value.remedy
        redis_server.mark_supervised(settings, False)

        url = redis_server.ensure_redis(settings)  # started by hand: retired and started again
        assert redis.Redis.from_url(url).get("kept") == b"yes"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=settings.redis.port).ping()
    finally:
        redis_server.mark_supervised(settings, False)
        redis_server.stop(settings)


def test_someone_elses_redis_on_the_port_is_refused_not_stopped(tmp_path: Path) -> None:
    settings = _project(tmp_path / "project")
    other = _project(tmp_path / "other", port=settings.redis.port)
    _open_server(settings, tmp_path / "someone")
    stranger = redis.Redis(port=settings.redis.port)
    try:
        with pytest.raises(StoreUnavailable, match="not this project's"):
            redis_server.ensure_redis(settings)
        assert stranger.ping()
        stranger.shutdown(nosave=True)
        redis_server.ensure_redis(other)  # locked, with other's password
        with pytest.raises(StoreUnavailable, match="refused this project's password") as caught:
            redis_server.ensure_redis(settings)
        assert redis_server.embedded_password(other) not in str(caught.value)
    finally:
        redis_server.stop(other)


def test_a_stale_pid_file_never_gets_another_process_killed(tmp_path: Path) -> None:
    """The pid of a Redis that crashed may be reused by any process: `stop` must not signal it."""
    import subprocess
    import sys

    from maquette.data import redis_server as rs
    from tests.conftest import free_port

    settings = load_settings(tmp_path)
    settings.redis.port = free_port()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pidfile = rs._data_dir(settings) / "redis.pid"
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(f"{other.pid}\n")
        assert rs._pid(settings) is None
        assert rs.stop(settings) is False
        assert other.poll() is None  # still running: never signalled
    finally:
        other.kill()
        other.wait(10)
