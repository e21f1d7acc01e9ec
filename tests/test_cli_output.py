"""Output for people and for programs: tables keep whole words when piped, `--json` prints one
JSON document built from the library's objects (real registry, real Redis, real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from maquette import registry
from maquette.cli import app
from maquette.cli.options import print_json
from maquette.cli.render import feature_views_document
from maquette.config import Settings
from maquette.data.secrets import redact
from tests.conftest import free_port, make_project

runner = CliRunner()


def _cli(settings: Settings, *argv: str) -> Any:
    """`maquette ARGV --project P` in-process; its stdout is not a terminal, as in a pipe."""
    result = runner.invoke(app, [*argv, "--project", str(settings.project_dir)])
    assert result.exit_code == 0, result.output
    return result


def _document(settings: Settings, *argv: str) -> Any:
    """The JSON document `maquette ARGV --json` prints: json.loads fails on anything more."""
    return json.loads(_cli(settings, *argv, "--json").stdout)


# ------------------------------------------------------------------ tables keep whole words


def test_models_show_piped_keeps_every_word_and_date_whole(
    trained: dict[str, Any], loaded_project: Settings
) -> None:
    version = registry.resolve(loaded_project, trained["flight_delay"].tag)
    out = _cli(loaded_project, "models", "show", version.tag).stdout
    assert "…" not in out
    lines = out.splitlines()
    # Each feature's row holds its name, its view and its importance on one line.
    for feature in version.record.features:
        importance = f"{version.record.importance[feature.name]:,.4f}"
        assert any(
            f" {feature.name} " in line and f" {feature.view} " in line and importance in line
            for line in lines
        ), f"no row for {feature.name}:\n{out}"
    for split in version.record.data.values():
        assert f"{split.first_event} .. {split.last_event}" in out
    assert any(len(line) > 120 for line in lines)  # wider than rich's 80 columns, not wrapped


def test_models_list_through_a_real_pipe_prints_one_whole_line_per_version(
    trained: dict[str, Any], loaded_project: Settings
) -> None:
    command = [sys.executable, "-m", "maquette", "models", "list", "--project"]
    done = subprocess.run(
        [*command, str(loaded_project.project_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "60"},  # a narrow terminal's leftover: ignored when piped
    )
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    for version in registry.list_versions(loaded_project):
        test = version.record.metrics.test.model
        metric = "rmse" if "rmse" in test else "auc"
        (line,) = [x for x in done.stdout.splitlines() if f" {version.tag} " in x]
        assert f"{metric} {test[metric]:.3f}" in line, done.stdout


# ------------------------------------------------------------------------- --json documents


def test_models_list_json_holds_every_version_with_its_test_metrics(
    trained: dict[str, Any], loaded_project: Settings
) -> None:
    document = _document(loaded_project, "models", "list")
    versions = registry.list_versions(loaded_project)
    assert [v["tag"] for v in document["versions"]] == [v.tag for v in versions]
    for entry, version in zip(document["versions"], versions, strict=True):
        assert entry["model"] == version.name and entry["version"] == version.version
        assert entry["created"] == version.created.isoformat()
        assert entry["aliases"] == registry.aliases_of(loaded_project, version)
        assert entry["task"] == version.record.task
        assert entry["test_metrics"] == json.loads(
            version.record.metrics.test.model_dump_json(include={"model", "baseline"})
        )
        assert Path(entry["report"]) == version.report


def test_models_show_json_is_the_whole_record_with_aliases(
    trained: dict[str, Any], loaded_project: Settings
) -> None:
    version = registry.resolve(loaded_project, trained["late_arrival"].tag)
    document = _document(loaded_project, "models", "show", version.tag)
    assert document["record"] == json.loads((version.path / "record.json").read_text())
    assert document["tag"] == version.tag
    assert document["aliases"] == registry.aliases_of(loaded_project, version)
    assert document["alias_history"] == registry.alias_history(loaded_project, version.name)


def test_models_compare_json_pairs_each_metric_and_feature(
    trained: dict[str, Any], loaded_project: Settings
) -> None:
    a, b = trained["flight_delay"].tag, trained["late_arrival"].tag
    document = _document(loaded_project, "models", "compare", a, b)
    comparison = registry.compare(loaded_project, a, b)
    assert (document["a"], document["b"]) == (a, b)
    assert [(m["metric"], m["a"], m["b"]) for m in document["metrics"]] == comparison["metrics"]
    assert [(f["feature"], f["a"], f["b"]) for f in document["importance"]] == [
        tuple(row) for row in comparison["importance"]
    ]


def test_redis_status_and_predictions_count_json(loaded_project: Settings) -> None:
    redis = _document(loaded_project, "redis", "status")
    # The URL as shown: its password (the session's Redis has one) never printed.
    assert redis["running"] is True and redis["url"] == redact(str(loaded_project.redis.url))
    assert "***@" in redis["url"]
    assert isinstance(redis["keys"], int)
    counts = _document(loaded_project, "predictions", "count")
    assert set(counts) == {"waiting", "drained"}
    assert all(isinstance(n, int) for n in counts.values())


def test_status_json_of_a_stopped_platform_exits_1_with_every_component(
    tmp_path: Path,
) -> None:
    project = make_project(
        tmp_path,
        None,
        redis={"port": free_port()},
        orchestration={"prefect_port": free_port(), "runner_port": free_port()},
    )
    result = runner.invoke(app, ["status", "--json", "--project", str(project)])
    assert result.exit_code == 1, result.output  # one is down: the same exit code as the table
    document = json.loads(result.stdout)
    names = [c["name"] for c in document["components"]]
    assert "redis" in names and "prefect" in names
    assert document["up"] is False
    assert {c["state"] for c in document["components"]} == {"stopped"}
    assert document["schedules"] is None  # Prefect does not answer


def test_feature_views_document_lists_views_services_and_ttls(
    feature_layer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    print_json(feature_views_document(feature_layer))
    document = json.loads(capsys.readouterr().out)
    views = {v["name"]: v for v in document["feature_views"]}
    assert set(views) == {v.name for v in feature_layer.feature_views()}
    for view in feature_layer.feature_views():
        assert [f["name"] for f in views[view.name]["features"]] == [f.name for f in view.features]
    # Three hours of weather; aircraft facts never expire (Feast's TTL 0), which is not "none".
    assert views["weather_hourly"]["ttl_s"] == 3 * 3600
    assert views["plane"]["ttl_s"] == 0
    services = {s.name for s in feature_layer.store.list_feature_services()}
    assert {s["name"] for s in document["feature_services"]} == services


# ------------------------------------------------------------ a project without any model


def test_a_command_needing_a_model_in_a_project_without_one_says_what_to_declare(
    tmp_path: Path,
) -> None:
    project = make_project(tmp_path, None, redis={"port": free_port()})
    config = yaml.safe_load((project / "maquette.yaml").read_text())
    config["models"] = {}
    (project / "maquette.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["bench", "training", "--project", str(project)])
    assert result.exit_code == 2, result.output
    words = " ".join(result.output.split())
    assert "no model is declared in" in words
    assert "Declare a model under models: in maquette.yaml" in words
