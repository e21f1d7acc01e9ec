from pathlib import Path

import pytest
import yaml
from feast.repo_config import load_repo_config

from maquette.config import load_settings
from maquette.data.redis_server import embedded_url, redis_url
from maquette.errors import ConfigError
from maquette.features.layer import repo_config

ROOT = Path(__file__).resolve().parent.parent


def test_feature_store_yaml_agrees_with_default_settings() -> None:
    settings = load_settings(ROOT)
    plain = load_repo_config(ROOT / "feature_repo", ROOT / "feature_repo" / "feature_store.yaml")
    ours = repo_config(settings)
    assert plain.project == ours.project
    assert (ROOT / "feature_repo" / plain.registry.path).resolve() == Path(ours.registry.path)
    assert plain.online_store.connection_string == ours.online_store.connection_string
    assert plain.offline_store.type == ours.offline_store.type == "duckdb"
    assert plain.entity_key_serialization_version == ours.entity_key_serialization_version == 3


def test_relative_paths_resolve_against_the_project_dir(tmp_path: Path) -> None:
    (tmp_path / "maquette.yaml").write_text("paths:\n  offline_store: data/offline\n")
    settings = load_settings(tmp_path)
    assert settings.offline_store == tmp_path.resolve() / "data" / "offline"


def test_environment_overrides_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "maquette.yaml").write_text("redis:\n  port: 7000\nfeast:\n  project: filed\n")
    monkeypatch.setenv("MAQUETTE_REDIS_PORT", "7001")
    monkeypatch.setenv("MAQUETTE_FEAST_PROJECT", "from_env")
    settings = load_settings(tmp_path)
    assert settings.redis.port == 7001
    assert settings.feast.project == "from_env"
    assert redis_url(settings) == embedded_url(settings) == "redis://127.0.0.1:7001/0"


def test_maquette_redis_url_selects_an_external_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAQUETTE_REDIS_URL", "redis://example:6380/2")
    assert redis_url(load_settings(tmp_path)) == "redis://example:6380/2"


def test_invalid_yaml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "maquette.yaml").write_text("redis: [unclosed\n")
    with pytest.raises(ConfigError, match=r"maquette\.yaml is not valid YAML"):
        load_settings(tmp_path)


def test_unknown_setting_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "maquette.yaml").write_text(yaml.safe_dump({"redis": {"prot": 1}}))
    with pytest.raises(ConfigError, match="prot"):
        load_settings(tmp_path)


def test_wrong_type_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "maquette.yaml").write_text(yaml.safe_dump({"redis": {"port": "high"}}))
    with pytest.raises(ConfigError, match="port"):
        load_settings(tmp_path)
