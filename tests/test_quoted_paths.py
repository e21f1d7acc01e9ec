"""A project folder whose name holds a quote and a space: every query over its files still runs
(paths are quoted as SQL literals, never pasted between quotes)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from maquette.config import Settings, load_settings
from maquette.data import sources as datasets
from maquette.platform.replay import entity_rows
from maquette.training.prepare import _load_entities
from tests.conftest import copy_feature_tables, make_project


def test_a_project_named_with_a_quote_and_a_space_reads_its_tables(
    loaded_project: Settings, tmp_path: Path
) -> None:
    folder = make_project(tmp_path / "it's my project", str(loaded_project.redis.url))
    settings = load_settings(folder)
    copy_feature_tables(loaded_project, settings)
    path = datasets.require_loaded(settings, settings.entity_source())
    assert "'" in str(path) and " " in str(path)
    spec = settings.model_spec("flight_delay")
    entities = _load_entities(settings, spec)
    assert len(entities) > 1000
    day = entity_rows(
        settings,
        "flight_delay",
        datetime(2013, 12, 2, tzinfo=UTC),
        datetime(2013, 12, 3, tzinfo=UTC),
    )
    assert len(day) > 50
