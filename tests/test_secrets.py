"""Generated credentials: private files, one value per project, credentials never shown."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from maquette.config import load_settings
from maquette.data.secrets import (
    generated_secret,
    redact,
    secrets_dir,
    without_credentials,
)
from maquette.data.shared_files import private_state
from maquette.errors import ConfigError


def test_a_generated_secret_is_private_and_stable(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    first = generated_secret(settings, "redis_password")
    assert len(first) >= 40 and generated_secret(settings, "redis_password") == first
    assert generated_secret(settings, "prefect_auth") != first
    path = secrets_dir(settings) / "redis_password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)  # readable by others: refused, with the fix
    with pytest.raises(ConfigError, match="others can read it") as caught:
        generated_secret(settings, "redis_password")
    assert "chmod 600" in caught.value.remedy and first not in str(caught.value)


def test_redact_hides_the_credentials_of_every_url() -> None:
    text = "Redis at redis://:s3cret@127.0.0.1:6399/0 and http://me:pw@host:80/x down"
    assert redact(text) == "Redis at redis://***@127.0.0.1:6399/0 and http://***@host:80/x down"
    plain = "redis://127.0.0.1:6399/0 and http://host/a?b=c"
    assert redact(plain) == plain
    # An @ later in a URL may end an unencoded password: more is hidden, never less.
    assert redact("http://host/a?b=c@d") == "http://***@d"
    # A user's password need not be percent-encoded: all of it is hidden still, whatever it
    # holds; and redis-py's password= query parameter too.
    for raw in ("pa)ss", 'pa"ss', "p#w", "p?w", "p/w@h/0?x=a"):
        assert raw not in redact(f"redis://:{raw}@h:1/0 down"), raw
    assert redact("redis://h:1/0?password=s3cret&db=2") == "redis://h:1/0?password=***&db=2"
    assert redact("redis://:pa/ss@h:1/0") == "redis://***@h:1/0"
    assert redact("'redis://:p@ss@h:1/0'") == "'redis://***@h:1/0'"
    assert without_credentials("redis://u:p@ss@h:1/0") == "redis://h:1/0"


def test_processes_starting_at_once_agree_on_one_secret(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        values = pool.map(_secret_of, [str(tmp_path)] * 16)
    assert len(set(values)) == 1 and values[0]
    assert [p.name for p in (tmp_path / ".maquette" / "secrets").iterdir()] == ["shared"]


def _secret_of(folder: str) -> str:
    return generated_secret(load_settings(folder), "shared")


def test_an_empty_credential_is_no_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAQUETTE_SERVING_API_KEY", "")
    monkeypatch.setenv("MAQUETTE_REDIS_PASSWORD", "  ")
    settings = load_settings(tmp_path)
    assert settings.serving.api_key is None and settings.redis.password is None
    monkeypatch.setenv("MAQUETTE_SERVING_API_KEY", "k")
    key = load_settings(tmp_path).serving.api_key
    assert key is not None and key.get_secret_value() == "k"


def test_the_state_folder_is_made_private(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    settings.state_dir.mkdir(mode=0o755)
    settings.state_dir.chmod(0o755)
    assert private_state(settings) == settings.state_dir
    assert stat.S_IMODE(settings.state_dir.stat().st_mode) == 0o700
