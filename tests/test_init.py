"""`maquette init`: the files it writes, the ports it picks, what it refuses, and a scaffold that
Feast accepts as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from maquette.cli import app
from maquette.config import load_settings
from maquette.errors import ConfigError
from maquette.project import init_project, user_lines
from maquette.project.scaffold import project_ports

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = [
    ".gitignore",
    "bentos/service.py",
    "feature_repo/entities.py",
    "feature_repo/feature_services.py",
    "feature_repo/feature_store.yaml",
    "feature_repo/feature_views.py",
    "feature_repo/sources.py",
    "features_sql/item.sql",
    "features_sql/shop_daily.sql",
    "features_sql/user_daily.sql",
    "flows/train.py",
    "maquette.yaml",
]


def test_init_example_writes_the_project_its_data_and_two_models(tmp_path: Path) -> None:
    result = init_project(tmp_path / "shop", example=True)
    for name in [*EXPECTED, "data/items.csv", "data/ratings.csv"]:
        assert (result.folder / name).is_file(), name
    settings = load_settings(result.folder)
    assert sorted(settings.models) == ["liked", "rating"]
    assert settings.redis.port == result.ports.redis
    assert settings.serving.port == result.ports.serving
    assert settings.orchestration.prefect_port == result.ports.prefect
    assert settings.orchestration.runner_port == result.ports.runner
    store = yaml.safe_load((result.folder / "feature_repo/feature_store.yaml").read_text())
    assert store["online_store"]["connection_string"] == f"127.0.0.1:{result.ports.redis}"
    assert store["project"] == settings.feast.project == "shop"
    header, *rows = (result.folder / "data/ratings.csv").read_text().splitlines()
    assert header == "user_id,item_id,rated_at,rating,liked"
    assert all(int(r.split(",")[3]) in range(1, 6) for r in rows)
    assert 10_000 < len(rows) < 30_000


def test_init_without_example_writes_no_data_and_comments_the_models_out(tmp_path: Path) -> None:
    result = init_project(tmp_path / "mine")
    assert not (result.folder / "data").exists()
    text = (result.folder / "maquette.yaml").read_text()
    assert "# models:" in text
    assert load_settings(result.folder).models == {}


def test_init_writes_nothing_about_flights(tmp_path: Path) -> None:
    folder = init_project(tmp_path / "shop", example=True).folder
    for pattern in ("maquette.yaml", "feature_repo/*", "features_sql/*"):
        for path in folder.glob(pattern):
            assert not re.search(r"flight|nycflights|origin|carrier", path.read_text()), path


def test_init_example_data_is_the_same_every_time(tmp_path: Path) -> None:
    one = init_project(tmp_path / "one", example=True).folder
    two = init_project(tmp_path / "two", example=True).folder
    assert (one / "data/ratings.csv").read_bytes() == (two / "data/ratings.csv").read_bytes()


def test_init_two_projects_get_different_ports(tmp_path: Path) -> None:
    one = init_project(tmp_path / "one").ports
    two = init_project(tmp_path / "two").ports
    assert not {*vars(one).values()} & {*vars(two).values()}
    assert project_ports(tmp_path / "one") == one  # the same path asks for the same ports


def test_init_skips_ports_already_taken(tmp_path: Path) -> None:
    import socket

    wanted = project_ports(tmp_path / "busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", wanted.prefect))
        got = init_project(tmp_path / "busy").ports
    assert wanted.prefect not in vars(got).values()


def test_init_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty") as caught:
        init_project(tmp_path)
    assert "--force" in caught.value.remedy
    assert not (tmp_path / "maquette.yaml").exists()
    init_project(tmp_path, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "maquette.yaml").is_file()


def test_init_without_flows_to_copy_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="flows") as caught:
        init_project(tmp_path / "p", checkout=tmp_path / "no-checkout")
    assert "copy flows/" in caught.value.remedy


def test_init_command_prints_ports_and_next_steps_and_url_prints_the_service(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["init", str(tmp_path / "shop"), "--example"])
    assert done.exit_code == 0, done.output
    settings = load_settings(tmp_path / "shop")
    assert f"redis {settings.redis.port}" in done.output
    assert "maquette data load" in done.output
    again = runner.invoke(app, ["init", str(tmp_path / "shop")])
    assert again.exit_code == ConfigError.exit_code
    url = runner.invoke(app, ["url", "--project", str(tmp_path / "shop")])
    assert url.output.strip() == f"http://127.0.0.1:{settings.serving.port}"


def test_readme_states_the_line_count_of_the_example_project(tmp_path: Path) -> None:
    counted = user_lines(init_project(tmp_path / "shop", example=True).folder)
    stated = re.search(
        r"That is (\d+) lines of YAML, SQL and Python", (ROOT / "README.md").read_text()
    )
    assert stated is not None and int(stated.group(1)) == counted
    assert counted < 150


def test_scaffold_python_passes_the_linter(tmp_path: Path) -> None:
    folder = init_project(tmp_path / "shop").folder
    lint = [sys.executable, "-m", "ruff", "check", "--isolated", "--line-length", "100"]
    rules = ["--select", "E,F,I,UP,B,SIM,RUF", "feature_repo"]
    # From the project's folder, as its user runs it: maquette is a third-party import there.
    done = subprocess.run([*lint, *rules], capture_output=True, text=True, cwd=folder)
    assert done.returncode == 0, done.stdout


def test_features_apply_registers_the_scaffold_as_written(
    tmp_path: Path, running_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maquette.features.layer import FeatureLayer

    folder = init_project(tmp_path / "shop", example=True).folder
    monkeypatch.setenv("MAQUETTE_REDIS_URL", running_redis)
    layer = FeatureLayer(load_settings(folder))
    names = layer.apply()
    assert names == ["item_attributes", "item_last_hour", "shop_daily", "user_daily", "shop"]
    assert [v.name for v in layer.store.list_on_demand_feature_views()] == ["rating_time"]


def test_init_again_with_force_keeps_the_projects_ports(tmp_path: Path) -> None:
    # Its running Redis and service still hold them: a rewrite must not move the project.
    first = init_project(tmp_path / "shop").ports
    config = yaml.safe_load((tmp_path / "shop" / "maquette.yaml").read_text())
    config["redis"]["port"] = first.redis + 7  # set by hand since
    (tmp_path / "shop" / "maquette.yaml").write_text(yaml.safe_dump(config))
    again = init_project(tmp_path / "shop", force=True).ports
    assert again.redis == first.redis + 7 and again.serving == first.serving


def test_init_refuses_to_write_over_the_checkout_it_copies_from(tmp_path: Path) -> None:
    checkout = tmp_path / "maquette"
    for part in ("flows", "bentos"):
        (checkout / part).mkdir(parents=True)
        (checkout / part / "kept.py").write_text("mine\n")
    with pytest.raises(ConfigError, match="is the Maquette checkout"):
        init_project(checkout, force=True, checkout=checkout)
    assert not (checkout / "maquette.yaml").exists()


def test_init_prints_a_folder_with_spaces_and_brackets_as_a_shell_can_paste_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "my [shop]"
    done = CliRunner().invoke(app, ["init", str(folder)])
    assert done.exit_code == 0, done.output
    assert f"cd '{folder}' && " in done.output.replace("\n", "")
