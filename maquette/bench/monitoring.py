"""Monitoring benchmarks (`maquette bench monitoring`), each case in a fresh interpreter.

1. Label join + live metrics for N logged predictions (default 1,000,000): a synthetic log
   built from the model's entity source (label join keys, request times, a served-features
   JSON of the model's width), labels keyed by entity keys + time; wall time and peak RSS of
   `labels.join_labels` + `monitoring.live_metrics` (daily and hourly).
2. Evidently data drift on 100,000 rows x 20 features: stock (`Report([DataDriftPreset()])`
   on all rows) next to Maquette's report path (sampled to `monitoring.report_rows` and the
   reference to `monitoring.reference_rows`, as the reports say).
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from maquette import registry
from maquette.bench.harness import (
    peak_rss_mb,
    results_table,
    run_child,
    settings_from_ref,
    settings_ref,
)
from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.errors import ConfigError
from maquette.model_spec import LabelSpec
from maquette.monitoring import labels
from maquette.monitoring.drift import SEED
from maquette.monitoring.live_metrics import METRIC_COLUMNS, live_metrics


def _child(kind: str, settings_json: str, arg: str) -> dict[str, Any]:
    return run_child(__name__, kind, settings_json, arg)


def _child_main(kind: str, settings_json: str, arg: str) -> dict[str, Any]:
    """One case, run by `harness.run_child` in a fresh interpreter."""
    import warnings

    warnings.filterwarnings("ignore")
    settings = settings_from_ref(settings_json)
    if kind == "join":
        seconds, rows, extra = _join_case(settings, arg)
    else:
        seconds, rows, extra = _drift_case(settings, kind, Path(arg))
    return {"seconds": seconds, "rows": rows, "rss_mb": peak_rss_mb(), **extra}


def _join_case(settings: Settings, name: str) -> tuple[float, int, dict[str, Any]]:
    """Ingest the bench's labels, then time the label join and both windows' live metrics."""
    labels.ingest_labels(settings, name, settings.offline_store / "bench_labels.parquet")
    began = time.perf_counter()
    scored = labels.join_labels(settings, name, columns=METRIC_COLUMNS)
    joined = time.perf_counter() - began
    for window in ("daily", "hourly"):
        live_metrics(settings, name, scored, window)
    rows = scored.num_rows
    extra = {"join_s": joined, "labelled": rows - scored["label"].null_count}
    return time.perf_counter() - began, rows, extra


def _drift_case(settings: Settings, kind: str, folder: Path) -> tuple[float, int, dict[str, Any]]:
    """Evidently's data drift, on all rows (stock) or sampled as Maquette's reports are."""
    # Imported here: Evidently takes seconds to import.
    from evidently import Report
    from evidently.presets import DataDriftPreset

    reference, current = (pd.read_parquet(folder / f"{s}.parquet") for s in ("ref", "cur"))
    rows = len(current)
    if kind == "drift_maquette":
        current = current.sample(min(rows, settings.monitoring.report_rows), random_state=SEED)
        reference = reference.sample(
            min(len(reference), settings.monitoring.reference_rows), random_state=SEED
        )
    began = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current, reference)
    share = snapshot.dict()["metrics"][0]["value"]["share"]
    return time.perf_counter() - began, rows, {"drift_share": share}


def _labelled_entities(settings: Settings, name: str) -> tuple[pd.DataFrame, LabelSpec]:
    """The entity source's rows with every label join key set: keys, request time, label."""
    spec = settings.model_spec(name)
    if spec.labels is None:
        raise ConfigError(
            f"model {name!r} declares no label source.",
            f"Add models.{name}.labels (join_keys, time_column) to maquette.yaml.",
        )
    keys = spec.labels.join_keys
    partition = [spec.partition_by] if spec.partition_by and spec.partition_by not in keys else []
    columns = ", ".join(f'"{c}"' for c in [*keys, *partition, spec.labels.time_column])
    source = datasets.require_loaded(settings, spec.labels.source or settings.entity_source(spec))
    entities = (
        duckdb_connection()
        .sql(
            f"SELECT {columns}, ({spec.label})::DOUBLE AS label FROM read_parquet({sql_literal(str(source))}) "
            "WHERE " + " AND ".join(f'"{k}" IS NOT NULL' for k in keys)
        )
        .df()
    )
    return entities, spec.labels


def _synthetic_log(settings: Settings, bench: Settings, name: str, rows: int) -> str:
    """Write `rows` logged predictions of the newest version of `name` and their labels."""
    versions = registry.list_versions(settings, name)
    if not versions:
        raise SystemExit(f"no registered version of {name}: run `maquette train {name}` first")
    version = versions[-1]
    features = version.record.feature_names
    entities, spec = _labelled_entities(settings, name)
    keys, time_column = spec.join_keys, spec.time_column
    partition_by = settings.model_spec(name).partition_by
    rng = np.random.default_rng(7)
    picks = entities.iloc[rng.integers(0, len(entities), rows)].reset_index(drop=True)
    # A served-features JSON as wide as the model's: the bulk of a real log's bytes.
    values = rng.normal(size=(rows, len(features))).round(4)
    features_json = [
        "{" + ",".join(f'"{f}":{v}' for f, v in zip(features, row, strict=True)) + "}"
        for row in values
    ]
    requested = picks[time_column]
    table = pa.table(
        {
            "prediction_id": [uuid.uuid4().hex for _ in range(rows)],
            "logged_at": pa.array(requested, pa.timestamp("us", tz="UTC")),
            "request_time": pa.array(requested, pa.timestamp("us", tz="UTC")),
            "model": [name] * rows,
            "version": [version.version] * rows,
            "partition": picks[partition_by].astype(str) if partition_by else [None] * rows,
            "shadow": [False] * rows,
            "prediction": picks["label"].fillna(0).to_numpy(float) + rng.normal(0, 20, rows),
            "decision": pa.nulls(rows, pa.bool_()),
            "latency_ms": rng.uniform(1, 5, rows),
            "entity": [json.dumps(r) for r in picks[keys].to_dict("records")],
            "request": [json.dumps({time_column: t.isoformat()}) for t in requested],
            "features": features_json,
            "missing": pa.array([[] for _ in range(rows)], pa.list_(pa.string())),
            "stale": pa.array([[] for _ in range(rows)], pa.list_(pa.string())),
            "stream_id": [f"{i}-0" for i in range(rows)],
        }
    )
    # The folder names are for people (the columns are in the files): the newest request day.
    day = f"date={requested.max():%Y-%m-%d}"
    folder = bench.path(bench.predictions.folder) / day / f"model={name}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-bench.parquet", row_group_size=100_000)
    labelled = entities.drop_duplicates([*keys, time_column])[[*keys, time_column, "label"]]
    bench.offline_store.mkdir(parents=True, exist_ok=True)
    labelled.to_parquet(bench.offline_store / "bench_labels.parquet", index=False)
    return name


def _drift_data(folder: Path, rows: int, width: int) -> None:
    rng = np.random.default_rng(3)
    ref = pd.DataFrame({f"f{i}": rng.normal(size=rows) for i in range(width)})
    # A third of the features shift, as a season would.
    cur = pd.DataFrame(
        {f"f{i}": rng.normal(loc=0.3 if i % 3 == 0 else 0.0, size=rows) for i in range(width)}
    )
    ref.to_parquet(folder / "ref.parquet")
    cur.to_parquet(folder / "cur.parquet")


def _cells(case: str, result: dict[str, Any], notes: str) -> tuple[str, str, str, str]:
    if "error" in result:
        return case, "failed", "", result["error"][:80]
    return case, f"{result['seconds']:.2f} s", f"{result['rss_mb']:,.0f} MB", notes


def _run_cases(
    settings: Settings, name: str, rows: int, drift_rows: int, console: Console
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(join, stock drift, Maquette drift) results, on a scratch offline store."""
    with tempfile.TemporaryDirectory(prefix="maquette-bench-monitoring-") as scratch:
        bench = settings.model_copy(deep=True)
        bench.paths.offline_store = Path(scratch) / "offline"
        bench.paths.reports = Path(scratch) / "reports"
        bench.predictions.folder = Path(scratch) / "offline" / "predictions"
        with console.status(f"writing {rows:,} logged predictions"):
            _synthetic_log(settings, bench, name, rows)
        with console.status("label join + live metrics"):
            join = _child("join", settings_ref(bench), name)
        folder = Path(scratch) / "drift"
        folder.mkdir()
        _drift_data(folder, drift_rows, 20)
        with console.status("Evidently drift: stock"):
            stock = _child("drift_stock", settings_ref(bench), str(folder))
        with console.status("Evidently drift: Maquette"):
            mine = _child("drift_maquette", settings_ref(bench), str(folder))
    return join, stock, mine


def run_monitoring_benchmarks(
    settings: Settings, name: str, rows: int, drift_rows: int, console: Console
) -> str:
    """Run both cases; print a table and return it as Markdown."""
    join, stock, mine = _run_cases(settings, name, rows, drift_rows, console)
    ratio = stock.get("seconds", 0) / mine["seconds"] if mine.get("seconds") else 0
    monitoring = settings.monitoring
    cells = [
        _cells(
            f"label join + daily & hourly metrics, {rows:,} predictions",
            join,
            f"join alone {join.get('join_s', 0):.2f} s; {join.get('labelled', 0):,} labelled",
        ),
        _cells(
            f"stock Evidently drift, {drift_rows:,} x 20",
            stock,
            f"drift share {stock.get('drift_share', 0):.2f}",
        ),
        _cells(
            f"Maquette report path, sampled to {monitoring.report_rows:,} / "
            f"{monitoring.reference_rows:,}",
            mine,
            f"drift share {mine.get('drift_share', 0):.2f}; {ratio:.1f}x faster than stock",
        ),
    ]
    headers = ("case", "wall time", "peak RSS", "notes")
    return results_table(console, "Monitoring benchmarks", headers, cells)
