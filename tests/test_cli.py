"""The CLI over a real project: help everywhere, real commands, errors as exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from maquette.cli import app
from maquette.config import Settings

runner = CliRunner()


def _is_group(command: object) -> bool:
    return hasattr(command, "commands")  # Typer vendors its own click: no isinstance check


def _commands(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        path = (*prefix, name)
        found.append(path)
        if _is_group(command):
            found += _commands(command, path)
    return found


ALL_COMMANDS = _commands(get_command(app))


def _command(path: tuple[str, ...]) -> object:
    command = get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


def _words(text: str) -> str:
    """`text` with every run of whitespace as one space: help output is re-wrapped to fit."""
    return " ".join(text.split())


def _description(command: object) -> str:
    """A command's own description: its short help, else the first paragraph of its help."""
    short = getattr(command, "short_help", None)
    first = (getattr(command, "help", None) or "").strip().split("\n\n")[0]
    return _words(short or first)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_every_command_has_help_with_a_description(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    said = _description(_command(path))
    assert said, f"`maquette {' '.join(path)}` has no description (docstring or help=)"
    assert said in _words(result.output), f"--help does not show {said!r}:\n{result.output}"


def test_leaf_commands_document_an_example() -> None:
    for path in ALL_COMMANDS:
        command = _command(path)
        if not _is_group(command):
            assert "Example: maquette" in (command.help or ""), path


def test_features_list_and_get_read_the_real_store(loaded_project: Settings) -> None:
    project = str(loaded_project.project_dir)
    listed = runner.invoke(app, ["features", "list", "--project", project])
    assert (
        listed.exit_code == 0
        and "weather_hourly" in listed.output
        and "flight_delay" in listed.output
    )
    got = runner.invoke(
        app,
        [
            "features",
            "get",
            "origin=JFK",
            "tailnum=N14228",
            "carrier=UA",
            "route=JFK-LAX",
            "scheduled_departure=2013-12-31T15:00",
            "--project",
            project,
        ],
    )
    assert got.exit_code == 0, got.output
    assert "route_flights_28d" in got.output and "PRESENT" in got.output


def test_unknown_feature_service_exits_non_zero_with_the_remedy(loaded_project: Settings) -> None:
    result = runner.invoke(
        app,
        [
            "features",
            "get",
            "origin=JFK",
            "--service",
            "nope",
            "--project",
            str(loaded_project.project_dir),
        ],
    )
    assert result.exit_code == 5
    assert "unknown feature service 'nope'" in result.output and "flight_delay" in result.output


def test_materialize_with_a_window_reports_rows(loaded_project: Settings) -> None:
    result = runner.invoke(
        app,
        [
            "features",
            "materialize",
            "--start",
            "2013-12-01",
            "--end",
            "2014-01-02",
            "--view",
            "route_daily",
            "--project",
            str(loaded_project.project_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "route_daily" in result.output


def test_bad_date_is_a_usage_error(loaded_project: Settings) -> None:
    result = runner.invoke(
        app,
        [
            "features",
            "materialize",
            "--start",
            "yesterday",
            "--project",
            str(loaded_project.project_dir),
        ],
    )
    assert result.exit_code == 2 and "not an ISO date" in result.output


def test_redis_status_reports_a_running_server(loaded_project: Settings) -> None:
    result = runner.invoke(app, ["redis", "status", "--project", str(loaded_project.project_dir)])
    assert result.exit_code == 0 and "running" in result.output and "True" in result.output


def test_data_load_in_a_fresh_folder_loads_the_configured_dataset(tmp_path: Path) -> None:
    (tmp_path / "maquette.yaml").write_text(
        "paths: {offline_store: offline}\n"
        "dataset: {module: maquette.examples.nycflights13.tables}\n"
    )
    result = runner.invoke(app, ["data", "load", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "offline" / "route_daily.parquet").is_file()


def test_cli_help_imports_none_of_the_heavy_libraries() -> None:
    # `maquette --help` has 0.3 s (issue 18): feast costs seconds, pydantic-settings (the
    # settings) 0.2 s, redis-py 0.3 s (it loads OpenTelemetry); commands import what they need.
    import subprocess
    import sys

    heavy = ("feast", "pydantic_settings", "redis", "maquette.config", "bentoml", "prefect")
    code = (
        "import sys\n"
        "from maquette.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('HEAVY:' + ','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:", out.stdout[-300:]
