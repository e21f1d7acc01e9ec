"""What the benchmarks take from the project's dataset: the BENCH declared beside its module."""

from __future__ import annotations

from pathlib import Path

import pytest

from maquette.bench.dataset import BenchDataset, bench_dataset
from maquette.config import Settings
from maquette.errors import ConfigError


def test_demo_dataset_declares_its_frame_views_and_floor_beside_its_tables() -> None:
    settings = Settings(dataset={"module": "maquette.examples.nycflights13.tables"})
    found = bench_dataset(settings)
    assert found.frame_views and found.frame_floor_sql is not None
    sql = found.frame_floor_sql(Path("/offline"), Path("/bench/entities.parquet"))
    assert "read_parquet('/bench/entities.parquet')" in sql
    assert "ASOF LEFT JOIN" in sql


def test_dataset_without_a_module_gets_the_default_bench_facts() -> None:
    assert bench_dataset(Settings(dataset={"module": None})) == BenchDataset()


def test_dataset_package_without_a_bench_module_gets_the_defaults() -> None:
    settings = Settings(dataset={"module": "maquette.data.sources"})
    assert bench_dataset(settings) == BenchDataset()


def test_bench_module_without_a_bench_dataset_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "mydata"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tables.py").write_text("")
    (package / "bench.py").write_text("BENCH = {'online_rows_from': 3}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="declares no BENCH"):
        bench_dataset(Settings(dataset={"module": "mydata.tables"}))
