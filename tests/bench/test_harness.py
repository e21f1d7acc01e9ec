"""The benchmarks' shared harness: child processes, peak RSS, result tables, shipped files."""

from __future__ import annotations

from importlib import resources

from rich.console import Console

from maquette.bench.harness import peak_rss_mb, results_table, run_child


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
