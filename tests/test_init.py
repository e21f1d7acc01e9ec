"""`maquette init`: the files it writes, the ports it picks, what it refuses, and a scaffold that
Feast accepts as written."""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from maquette.bench.alerts_faults import LabelShift, NullFeatures, load_faults
from maquette.cli import app
from maquette.config import load_settings
from maquette.errors import ConfigError
from maquette.project import init_project, user_lines
from maquette.project.scaffold import project_ports

ROOT = Path(__file__).resolve().parent.parent
# sha256 of ratings.csv's header and April-May rows as every version since `init` wrote them.
HISTORY = "f14a1d0c8f837e9a6a862b56b0140f0e92b609ca7d76b1fececc13998c13db9b"
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
    assert settings.console.port == result.ports.console
    # Kept for a switch to PostgreSQL (database: postgresql), beside Prefect's.
    assert settings.orchestration.postgres_port == result.ports.postgres
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
    assert not (result.folder / "alert_faults.yaml").exists()  # its faults name the example's
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


def _ratings(folder: Path) -> list[dict[str, str]]:
    with (folder / "data/ratings.csv").open() as rows:
        return list(csv.DictReader(rows))


def test_example_data_runs_a_month_past_the_splits_and_keeps_its_history(tmp_path: Path) -> None:
    folder = init_project(tmp_path / "shop", example=True).folder
    settings = load_settings(folder)
    replay = load_faults(folder / "alert_faults.yaml").replay
    # The replayed month starts where the models' splits and the stream's backfill stop.
    for spec in settings.models.values():
        assert spec.split.test.end == replay.start
    assert settings.stream.backfill_before == replay.start
    times = [datetime.fromtimestamp(int(r["rated_at"]), UTC) for r in _ratings(folder)]
    per_day = Counter(t.date() for t in times if replay.start <= t < replay.end)
    assert len(per_day) == (replay.end - replay.start).days
    assert min(per_day.values()) > 200  # every replayed day holds a day's traffic
    # The history is the one earlier versions wrote: the same seed, the same April and May.
    history = [t for t in times if t < replay.start]
    assert len(history) == 61 * 300 and min(history) >= datetime(2024, 4, 1, tzinfo=UTC)
    text = (folder / "data/ratings.csv").read_text().splitlines()
    assert hashlib.sha256("\n".join(text[: len(history) + 1]).encode()).hexdigest() == HISTORY


def test_example_faults_hit_the_slices_they_claim(tmp_path: Path) -> None:
    folder = init_project(tmp_path / "shop", example=True).folder
    faults = {f.kind: f for f in load_faults(folder / "alert_faults.yaml").faults}
    assert sorted(faults) == ["label_shift", "null_features", "stale_view", "unit_skew"]
    con = duckdb.connect()
    for table in ("items", "ratings"):
        con.execute(f"CREATE VIEW {table} AS FROM read_csv('{folder / 'data' / table}.csv')")

    def share(fault: Any) -> float:
        """Share of the fault's period's ratings its `where` selects."""
        period = f"rated_at >= {fault.start.timestamp()} AND rated_at < {fault.end.timestamp()}"
        hit, total = con.execute(
            f"SELECT count(*) FILTER ({fault.where}), count(*) FROM ratings WHERE {period}"
        ).fetchone() or (0, 0)
        return float(hit) / float(total)

    broken = faults["null_features"]
    assert isinstance(broken, NullFeatures)
    assert con.execute(f"SELECT count(*) FROM items WHERE {broken.where}").fetchone() == (4,)
    assert 0.05 < share(broken) < 0.2  # ~10% of the traffic: D3's incident
    shifted = faults["label_shift"]
    assert isinstance(shifted, LabelShift)
    film = con.execute("SELECT list(item_id ORDER BY item_id) FROM items WHERE category = 'film'")
    assert shifted.where == f"item_id IN ({', '.join(map(str, (film.fetchone() or [[]])[0]))})"
    assert 0.2 < share(shifted) < 0.45
    # One fault at a time, each repaired before the next starts and before the replay ends.
    ordered = sorted(faults.values(), key=lambda f: f.start)
    assert all(a.end <= b.start for a, b in itertools.pairwise(ordered))
    assert ordered[-1].end <= load_faults(folder / "alert_faults.yaml").replay.end


def test_example_faults_name_views_features_and_models_of_the_project(
    tmp_path: Path, running_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maquette.bench.alerts_inject import check_faults
    from maquette.features.layer import FeatureLayer
    from maquette.stream.backfill import load_dataset

    # Its own Feast project (the folder's name): keys apart from the other test's "shop".
    folder = init_project(tmp_path / "shop_faults", example=True).folder
    monkeypatch.setenv("MAQUETTE_REDIS_URL", running_redis)
    settings = load_settings(folder)
    load_dataset(settings)
    layer = FeatureLayer(settings)
    layer.apply()
    faults = load_faults(folder / "alert_faults.yaml")
    check_faults(settings, layer, faults)  # views, features, models, and each fault's SQL
    served = {
        f.name
        for service in layer.store.list_feature_services()
        for projection in service.feature_view_projections
        for f in projection.features
    }
    for fault in faults.faults:
        expect = fault.expect
        assert set(expect.columns) <= served, fault.name
        if expect.kind == "freshness":
            assert expect.model is None and expect.subject == getattr(fault, "view", None)
        else:
            assert expect.model in settings.models, fault.name
