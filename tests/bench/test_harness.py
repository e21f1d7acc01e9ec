"""The benchmarks' shared harness: child processes, peak RSS, result tables, shipped files."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pytest
from rich.console import Console

from maquette.bench.harness import peak_rss_mb, results_table, run_child
from maquette.bench.serving import (
    BENCH_PREDICTIONS,
    FLOOR,
    MAQUETTE,
    STOCK,
    _bench_log_length_and_clear,
)
from maquette.bench.startup import ready_seconds
from maquette.config import Settings, load_settings
from maquette.features.redis_cluster import shared_client
from maquette.serving.prediction_log import PredictionLog, shard_streams, shards_key
from tests.conftest import make_project


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


def test_the_serving_bench_counts_and_deletes_every_shard_of_its_stream(
    tmp_path: Path, running_redis: str
) -> None:
    # The bench's servers log into a stream of their own, sharded as the project's log is:
    # counting one stream left the other shards' entries in the project's Redis.
    folder = make_project(tmp_path, running_redis, predictions={"shards": 3})
    bench = load_settings(folder)
    bench.predictions.stream = BENCH_PREDICTIONS
    log = PredictionLog(bench)
    for i in range(3):
        log.append([{"prediction_id": [f"a{i}", f"b{i}"], "prediction": [1.0, 2.0]}])
    streams = shard_streams(bench)
    client = shared_client(bench)
    assert len(streams) == 3 and all(client.xlen(s) == 1 for s in streams)

    assert _bench_log_length_and_clear(load_settings(folder)) == 6
    assert not client.exists(*streams, shards_key(bench))


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
