from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
import yaml
from feast.repo_config import load_repo_config
from pydantic import BaseModel

from maquette.config import Settings, load_settings
from maquette.data.redis_server import embedded_url, redis_url
from maquette.data.secrets import redact
from maquette.errors import ConfigError
from maquette.features.layer import repo_config

ROOT = Path(__file__).resolve().parent.parent


def test_feature_store_yaml_agrees_with_default_settings() -> None:
    settings = load_settings(ROOT)
    plain = load_repo_config(ROOT / "feature_repo", ROOT / "feature_repo" / "feature_store.yaml")
    ours = repo_config(settings)
    assert plain.project == ours.project
    assert (ROOT / "feature_repo" / plain.registry.path).resolve() == Path(ours.registry.path)
    # The embedded Redis's password is given to Feast in memory, never written to the file.
    address = ours.online_store.connection_string.split(",password=")[0]
    assert plain.online_store.connection_string == address
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
    assert redis_url(settings) == embedded_url(settings)
    assert redact(redis_url(settings)) == "redis://***@127.0.0.1:7001/0"


def test_window_settings_come_from_the_environment_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAQUETTE_MONITORING_REPORT_WINDOW", "monthly")
    monkeypatch.setenv("MAQUETTE_MONITORING_WINDOWS", '["6h", "30 labelled"]')
    settings = load_settings(tmp_path)
    assert (settings.monitoring.report_window, settings.monitoring.windows) == (
        "monthly",
        ["6h", "30 labelled"],
    )
    monkeypatch.setenv("MAQUETTE_MONITORING_LABEL_WAIT", "a day")
    with pytest.raises(ConfigError, match=r"(?s)monitoring\.label_wait.*unknown duration 'a day'"):
        load_settings(tmp_path)


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


def _sections(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    yield model
    for field in model.model_fields.values():
        for kind in (field.annotation, *get_args(field.annotation)):
            for inner in (kind, *get_args(kind)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield from _sections(inner)


def test_every_setting_has_a_description() -> None:
    missing = [
        f"{section.__name__}.{name}"
        for section in dict.fromkeys(_sections(Settings))
        for name, field in section.model_fields.items()
        if not field.description
        and not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))
    ]
    assert missing == []


def test_default_settings_know_nothing_of_the_demo_dataset(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    assert settings.dataset.module is None and settings.dataset.entity_source is None
    assert settings.feast.feature_service is None and settings.stream.events_source is None
    assert settings.orchestration.batch_entities is None
    assert settings.demo.replay_start is None and settings.demo.replay_end is None


def test_unset_entity_source_is_a_config_error_saying_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset\.entity_source") as caught:
        load_settings(tmp_path).entity_source()
    assert "Set dataset.entity_source in maquette.yaml" in caught.value.remedy


def test_a_models_own_entity_source_wins_over_the_datasets(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    settings.dataset.entity_source = "events"
    spec = (
        load_settings(ROOT).model_spec("flight_delay").model_copy(update={"entity_source": "own"})
    )
    assert (settings.entity_source(), settings.entity_source(spec)) == ("events", "own")


def test_unset_default_feature_service_is_a_config_error_saying_what_to_set(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"feast\.feature_service is not set"):
        load_settings(tmp_path).default_feature_service()


def test_labels_without_time_column_is_a_config_error_naming_it(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "maquette.yaml").read_text())
    del config["models"]["flight_delay"]["labels"]["time_column"]
    (tmp_path / "maquette.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"flight_delay\.labels\.time_column"):
        load_settings(tmp_path)


def test_the_service_runs_optimized_unless_the_setting_says_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maquette.platform.launch import component_command
    from maquette.serving.server import service_command
    from tests.conftest import make_project

    monkeypatch.delenv("PYTHONOPTIMIZE", raising=False)
    settings = load_settings(make_project(tmp_path / "project", None))
    assert settings.orchestration.optimize_python
    assert service_command(settings, "127.0.0.1", 3999)[1]["PYTHONOPTIMIZE"] == "1"
    for name in ("service", "deployments", "stream"):
        assert component_command(settings, name)[1]["PYTHONOPTIMIZE"] == "1", name
    assert "PYTHONOPTIMIZE" not in component_command(settings, "prefect")[1]
    settings.orchestration.optimize_python = False
    assert "PYTHONOPTIMIZE" not in service_command(settings, "127.0.0.1", 3999)[1]
    assert "PYTHONOPTIMIZE" not in component_command(settings, "stream")[1]
