"""The benchmarks' shared harness: child processes, peak RSS, result tables, shipped files."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pytest
from rich.console import Console

from maquette.bench.harness import peak_rss_mb, results_table, run_child
from maquette.bench.serving import FLOOR, MAQUETTE, STOCK
from maquette.bench.startup import ready_seconds
from maquette.config import Settings


def test_peak_rss_is_this_process_high_water_mark_in_mb() -> None:
    assert 10 < peak_rss_mb() < 100_000


def test_run_child_reports_a_failing_case_as_its_last_error_line() -> None:
    result = run_child("maquette.bench.no_such_module", "case", "{}", "")
    assert "error" in result
    assert "No module named" in result["error"]


def test_results_table_prints_and_returns_the_same_rows_as_markdown() -> None:
    console = Console(record=True, width=120)
    markdown = results_table(console, "title", ("case", "stock", "Maquette"), [("a", "1", "2")])
    assert markdown == "| case | stock | Maquette |\n|---|---|---|\n| a | 1 | 2 |"
    assert "title" in console.export_text()


def test_wrk_script_and_comparison_servers_ship_with_the_package() -> None:
    package = resources.files("maquette.bench")
    for name in ("wrk_post.lua", "stock_service.py", "bare_asgi.py"):
        assert (package / name).is_file(), name


@pytest.mark.slow
@pytest.mark.parametrize("label", [MAQUETTE, STOCK, FLOOR])
def test_each_server_of_the_serving_benchmark_starts_on_a_trained_project(
    label: str,
    loaded_project: Settings,
    production: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every server must read the project's model store, named by its settings, not whatever
    # BENTOML_HOME the benchmark's own shell has: the stock one was started without it, found
    # no model and the benchmark timed out. So the store is named by the settings only here.
    store = os.environ["BENTOML_HOME"]
    monkeypatch.delenv("BENTOML_HOME")
    settings = loaded_project.model_copy(deep=True)
    settings.registry.bentoml_home = Path(store)
    assert ready_seconds(label, settings, timeout_s=240) > 0
