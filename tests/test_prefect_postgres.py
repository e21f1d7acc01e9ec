"""The Prefect server's state in PostgreSQL (`orchestration.database: postgresql`): the settings,
a PostgreSQL the platform runs, and one the user gives by URL. The schedule test
(tests/e2e/test_schedules_fire.py) runs on both databases."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from maquette.config import Settings, load_settings
from maquette.data import postgres_server
from maquette.errors import ComponentFailed, ConfigError
from maquette.platform import components as platform
from maquette.platform import supervisor
from tests.conftest import free_port, make_project

pytestmark = pytest.mark.postgres


def _project(folder: Path, **orchestration: object) -> Settings:
    make_project(
        folder,
        None,
        redis={"port": free_port()},
        orchestration={
            "prefect_port": free_port(),
            "runner_port": free_port(),
            "postgres_port": free_port(),
            **orchestration,
        },
    )
    return load_settings(folder)


def test_a_database_url_is_postgresql_through_asyncpg_and_needs_database_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAQUETTE_ORCHESTRATION_DATABASE", "postgresql")
    monkeypatch.setenv("MAQUETTE_ORCHESTRATION_DATABASE_URL", "postgres://u:p%40ss@db:5432/prefect")
    settings = _project(tmp_path / "given")
    assert (
        postgres_server.connection_url(settings) == "postgresql+asyncpg://u:p%40ss@db:5432/prefect"
    )
    assert not postgres_server.is_embedded(settings)
    assert "p%40ss" not in repr(settings.orchestration)  # a secret, never printed

    # Refused, and the refusal never repeats the password (pydantic quotes refused inputs).
    monkeypatch.setenv("MAQUETTE_ORCHESTRATION_DATABASE_URL", "mysql://u:hush-hush@db/prefect")
    with pytest.raises(ConfigError, match=r"must be a PostgreSQL URL: postgresql\+asyncpg://") as e:
        load_settings(tmp_path / "given")
    assert "hush-hush" not in str(e.value) and "orchestration.database_url" in str(e.value)
    monkeypatch.setenv("MAQUETTE_ORCHESTRATION_DATABASE_URL", "postgresql://u:hush-hush@db/p")
    monkeypatch.setenv("MAQUETTE_ORCHESTRATION_DATABASE", "sqlite")
    with pytest.raises(ConfigError, match="set database: postgresql") as e:
        load_settings(tmp_path / "given")
    assert "hush-hush" not in str(e.value)


def test_the_postgres_component_is_refused_on_sqlite_and_comes_with_prefect_on_postgresql(
    tmp_path: Path,
) -> None:
    sqlite = _project(tmp_path / "sqlite")
    assert "postgres" not in [s.name for s in platform.status(sqlite)]
    with pytest.raises(ConfigError, match=r"orchestration\.database is sqlite"):
        platform.up(sqlite, ["postgres"])
    postgresql = _project(tmp_path / "pg", database="postgresql")
    names = [s.name for s in platform.status(postgresql, ["redis", "prefect"])]
    assert names == ["redis", "postgres", "prefect"]


@pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as another user only for root")
def test_run_as_root_a_data_folder_postgres_cannot_reach_is_refused_with_the_folder_named(
    tmp_path: Path,
) -> None:
    # pytest's tmp_path is under /tmp/pytest-of-root, which is 0700: the `postgres` user
    # cannot enter it, and initdb would fail with a message about permissions far from here.
    settings = _project(tmp_path / "p", database="postgresql", postgres_data=str(tmp_path / "pg"))
    with pytest.raises(ConfigError, match=r"cannot enter .*pytest-of-root") as raised:
        postgres_server.initialize(settings)
    assert "orchestration.postgres_data" in str(raised.value.remedy)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Settings]:
    """A project running only its own PostgreSQL (the component alone)."""
    settings = _project(tmp_path / "owner", database="postgresql")
    try:
        platform.up(settings, ["postgres"])
        postgres_server.ensure_database(settings)  # as its own Prefect server's start would
        yield settings
    finally:
        platform.down(settings)
        shutil.rmtree(postgres_server.data_dir(settings), ignore_errors=True)


@pytest.mark.slow
def test_a_prefect_server_on_a_given_postgresql_url_stores_there_and_leaves_it_running(
    tmp_path: Path, embedded: Settings
) -> None:
    url = postgres_server.connection_url(embedded)
    settings = _project(tmp_path / "user", database="postgresql", database_url=url)
    try:
        shown = {s.name: s for s in platform.up(settings, ["prefect"])}
        assert shown["postgres"].state == "running", shown
        assert shown["postgres"].detail == "external (orchestration.database_url)"
        assert shown["postgres"].pid is None  # not ours to supervise
        assert postgres_server.password(embedded) not in str(shown["postgres"].url)
        assert (
            shown["prefect"].state == "running" and "state in PostgreSQL" in shown["prefect"].detail
        )
    finally:
        platform.down(settings)
    # Prefect's tables are in the given database; its server is down, the PostgreSQL is not.
    assert postgres_server.answers(embedded)
    tables = postgres_server.query(url, "SELECT count(*) FROM flow_run")
    assert tables == [(0,)]

    wrong = url.replace(postgres_server.password(embedded), "not-the-password")
    refused = _project(tmp_path / "wrong", database="postgresql", database_url=wrong)
    with pytest.raises(ComponentFailed, match="does not answer a query") as raised:
        platform.up(refused, ["prefect"])
    assert "not-the-password" not in str(raised.value)


def test_switching_back_to_sqlite_stops_the_embedded_postgresql_at_the_next_up(
    embedded: Settings,
) -> None:
    file = embedded.project_dir / "maquette.yaml"
    config = yaml.safe_load(file.read_text())
    config["orchestration"]["database"] = "sqlite"
    file.write_text(yaml.safe_dump(config))
    sqlite = load_settings(embedded.project_dir)
    assert postgres_server.postmaster_pid(embedded) is not None

    platform.up(sqlite, ["redis"])

    assert postgres_server.postmaster_pid(embedded) is None
    assert "postgres" not in supervisor.programs(sqlite)
