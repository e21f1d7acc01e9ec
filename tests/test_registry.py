"""Versions, aliases and references over the real BentoML model store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from maquette import registry
from maquette.cli import app
from maquette.cli.render import fmt
from maquette.config import Settings
from maquette.errors import ModelVersionNotFound
from maquette.registry import ModelVersion
from maquette.training import pipeline as training

runner = CliRunner()


def test_references_resolve_by_name_version_and_alias(trained, loaded_project: Settings) -> None:
    v1 = trained["flight_delay"]
    newest = registry.list_versions(loaded_project, "flight_delay")[-1]
    assert registry.resolve(loaded_project, "flight_delay").tag == newest.tag  # NAME: the latest
    assert registry.resolve(loaded_project, v1.tag).path == v1.path
    registry.promote(loaded_project, v1.tag, "candidate")
    assert registry.resolve(loaded_project, "flight_delay@candidate").tag == v1.tag


@pytest.fixture(scope="module")
def second_late_arrival(trained, loaded_project: Settings) -> tuple[str, ModelVersion]:
    """The version number `next_version` announced, and the late_arrival version then trained:
    one search trial with fewer trees than the session's, so its metrics differ."""
    settings = loaded_project.model_copy(deep=True)
    settings.models["late_arrival"].search.trials = 1
    settings.models["late_arrival"].params = {"n_estimators": 20}
    expected = registry.next_version(loaded_project, "late_arrival")
    return expected, training.train(settings, "late_arrival")


@pytest.fixture
def production_put_back(production: dict[str, str], loaded_project: Settings) -> Iterator[None]:
    """The test may move late_arrival@production; afterwards it points where it did."""
    yield
    registry.promote(loaded_project, production["late_arrival"], "production")


def test_promote_moves_the_alias_and_keeps_its_history(
    trained, second_late_arrival, production_put_back, loaded_project: Settings
) -> None:
    v1 = trained["late_arrival"]
    expected, v2 = second_late_arrival
    assert v2.version == expected != v1.version
    registry.promote(loaded_project, v1.tag, "production")
    move = registry.promote(loaded_project, v2.tag, "production")
    assert move["previous"] == v1.version and move["version"] == v2.version and move["by"]
    assert registry.resolve(loaded_project, "late_arrival@production").version == v2.version
    history = [
        (m["alias"], m["previous"], m["version"])
        for m in registry.alias_history(loaded_project, "late_arrival")
    ]
    assert history[-1:] == [("production", v1.version, v2.version)]
    assert history[-2][2] == v1.version
    assert registry.aliases_of(loaded_project, v2) == ["production"]


def test_models_promote_command_moves_the_alias_and_records_the_move(
    trained, second_late_arrival, production_put_back, loaded_project: Settings
) -> None:
    project = ["--project", str(loaded_project.project_dir)]
    v1, (_, v2) = trained["late_arrival"], second_late_arrival
    registry.promote(loaded_project, v1.tag, "production")
    result = runner.invoke(app, ["models", "promote", v2.tag, "--alias", "production", *project])
    assert result.exit_code == 0, result.output
    assert f"late_arrival@production -> {v2.version} (was {v1.version}), by " in result.output
    assert registry.resolve(loaded_project, "late_arrival@production").tag == v2.tag
    moves = [
        (m["alias"], m["previous"], m["version"], bool(m["by"] and m["at"]))
        for m in registry.alias_history(loaded_project, "late_arrival")
    ]
    assert moves[-1:] == [("production", v1.version, v2.version, True)], "move not in history"
    shown = runner.invoke(app, ["models", "list", "late_arrival", *project])
    row = next(line for line in shown.output.splitlines() if v2.tag in line)
    assert "production" in row, shown.output


def test_models_compare_command_prints_both_versions_metrics(
    trained, second_late_arrival, loaded_project: Settings
) -> None:
    v1, (_, v2) = trained["late_arrival"], second_late_arrival
    result = runner.invoke(
        app,
        ["models", "compare", v1.tag, v2.tag, "--project", str(loaded_project.project_dir)],
    )
    assert result.exit_code == 0, result.output
    first, second = v1.record.metrics.test.model, v2.record.metrics.test.model
    assert any(first[k] != second[k] for k in ("auc", "f1", "log_loss")), "versions alike"
    header = next(line for line in result.output.splitlines() if "test metric" in line)
    assert header.index(v1.tag) < header.index(v2.tag), result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    for metric in ("auc", "f1", "log_loss", "precision", "recall"):
        cells = [cell.strip() for cell in lines[metric].split("│")[1:4]]
        assert cells == [metric, fmt(first[metric]), fmt(second[metric])], result.output


def test_unknown_version_lists_the_versions(trained, loaded_project: Settings) -> None:
    with pytest.raises(ModelVersionNotFound, match="has no version 'v99'") as info:
        registry.resolve(loaded_project, "flight_delay:v99")
    assert trained["flight_delay"].version in info.value.remedy


def test_unknown_alias_lists_the_aliases_and_how_to_set_one(
    trained, loaded_project: Settings
) -> None:
    with pytest.raises(ModelVersionNotFound, match="has no alias 'nightly'") as info:
        registry.resolve(loaded_project, "flight_delay@nightly")
    assert "maquette models promote flight_delay:VERSION --alias nightly" in info.value.remedy


def test_unknown_model_lists_the_registered_ones(trained, loaded_project: Settings) -> None:
    with pytest.raises(ModelVersionNotFound, match="no model named 'nope'") as info:
        registry.resolve(loaded_project, "nope")
    assert "flight_delay" in info.value.remedy and "late_arrival" in info.value.remedy


def test_a_failure_while_registering_leaves_no_version(trained, loaded_project: Settings) -> None:
    before = registry.list_versions(loaded_project, "flight_delay")
    record = trained["flight_delay"].record.model_copy(update={"name": "flight_delay"})

    def broken_reports(folder, rec):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        registry.register(loaded_project, "v50", record, lambda folder: {}, broken_reports)
    assert registry.list_versions(loaded_project, "flight_delay") == before


def test_compare_puts_two_versions_side_by_side(
    trained, production, loaded_project: Settings
) -> None:
    comparison = registry.compare(
        loaded_project, trained["late_arrival"].tag, "late_arrival@production"
    )
    names = [m[0] for m in comparison["metrics"]]
    assert "auc" in names and "f1" in names
    assert comparison["importance"][0][0] in trained["late_arrival"].record.importance


def test_models_commands_show_list_compare_and_report(trained, loaded_project: Settings) -> None:
    project = ["--project", str(loaded_project.project_dir)]
    tag = trained["flight_delay"].tag
    shown = runner.invoke(app, ["models", "show", tag, *project])
    assert shown.exit_code == 0, shown.output
    for section in (
        "trained by",
        "search on validation",
        "data",
        "partitions",
        "features",
        "report:",
    ):
        assert section in shown.output
    listed = runner.invoke(app, ["models", "list", *project])
    assert listed.exit_code == 0 and tag in listed.output
    report = runner.invoke(app, ["models", "report", "flight_delay", *project])
    assert report.output.strip().endswith("report.html")
    missing = runner.invoke(app, ["models", "show", "flight_delay@nightly", *project])
    assert missing.exit_code == 7 and "no alias 'nightly'" in missing.output


def test_route_sets_and_gives_back_a_split_and_refuses_bad_weights_and_versions(
    trained, loaded_project: Settings
) -> None:
    version = trained["late_arrival"].version
    for weight in ("nan", "inf", "0", "-1"):
        result = runner.invoke(
            app,
            [
                *("models", "route", "late_arrival", "--traffic", f"{version}={weight}"),
                *("--project", str(loaded_project.project_dir)),
            ],
        )
        assert result.exit_code != 0 and "positive number" in result.output, result.output
    with pytest.raises(ModelVersionNotFound, match="no version 'v999'"):
        registry.route(loaded_project, "late_arrival", {"v999": 1.0})
    assert "late_arrival" not in registry.routing_table(loaded_project)
    try:
        made = registry.route(loaded_project, "late_arrival", {version: 1.0}, version)
        assert made["traffic"] == {version: 1.0} and made["shadow"] == version
        assert registry.routing_table(loaded_project)["late_arrival"] == {
            "traffic": {version: 1.0},
            "shadow": version,
        }
    finally:
        registry.route(loaded_project, "late_arrival", {}, "")  # maquette.yaml's again
    assert registry.routing_table(loaded_project)["late_arrival"] == {}


def test_version_numbers_continue_past_a_shared_folders_and_a_relative_one_is_the_projects(
    loaded_project: Settings,
) -> None:
    settings = loaded_project.model_copy(deep=True)
    settings.registry.shared_store = "shared-models-test"  # relative: inside the project
    folder = settings.project_dir / "shared-models-test"
    folder.mkdir(exist_ok=True)
    try:
        (folder / "elsewhere-v7.bentomodel").write_bytes(b"trained on another machine")
        assert registry.shared_location(settings, "elsewhere", "v8") == str(
            folder.resolve() / "elsewhere-v8.bentomodel"
        )
        # No version of it here, v7 in the shared folder: the next one trained is v8.
        assert registry.next_version(settings, "elsewhere") == "v8"
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
