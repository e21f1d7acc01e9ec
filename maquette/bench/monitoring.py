"""Monitoring benchmarks (`maquette bench monitoring`), each case in a fresh interpreter.

1. Label join + live metrics for N logged predictions (default 1,000,000): a synthetic log
   built from the real flights (entity keys, request times, a served-features JSON of the
   model's width), labels keyed by entity keys + time; wall time and peak RSS of
   `labels.join_labels` + `monitoring.live_metrics` (daily and hourly).
2. Evidently data drift on 100,000 rows x 20 features: stock (`Report([DataDriftPreset()])`
   on all rows) next to Maquette's report path (sampled to `monitoring.report_rows` and the
   reference to `monitoring.reference_rows`, as the reports say).
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from maquette.config import Settings


def _child(kind: str, settings_json: str, arg: str) -> dict[str, Any]:
    from maquette.bench.cases import _child as run_child

    return run_child(kind, settings_json, arg, module="maquette.bench.monitoring")


def _child_main(kind: str, settings_json: str, arg: str) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    settings = Settings.model_validate_json(settings_json)
    began = time.perf_counter()
    if kind == "join":
        from maquette.monitoring import labels
        from maquette.monitoring import monitor as monitoring

        name = arg
        labels.ingest_labels(settings, name, settings.offline_store / "bench_labels.parquet")
        began = time.perf_counter()
        scored = labels.join_labels(settings, name, columns=monitoring.METRIC_COLUMNS)
        joined = time.perf_counter() - began
        for window in ("daily", "hourly"):
            monitoring.live_metrics(settings, name, scored, window)
        rows = scored.num_rows
        extra = {"join_s": joined, "labelled": rows - scored["label"].null_count}
    else:
        from evidently import Report
        from evidently.presets import DataDriftPreset

        from maquette.monitoring.drift import SEED

        reference, current = (pd.read_parquet(Path(arg) / f"{s}.parquet") for s in ("ref", "cur"))
        rows = len(current)
        if kind == "drift_maquette":
            current = current.sample(min(rows, settings.monitoring.report_rows), random_state=SEED)
            reference = reference.sample(
                min(len(reference), settings.monitoring.reference_rows), random_state=SEED
            )
        began = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(current, reference)
        share = snapshot.dict()["metrics"][0]["value"]["share"]
        extra = {"drift_share": share}
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "rows": rows, "rss_mb": peak_rss_mb(), **extra}


def peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage: Linux carries ru_maxrss across exec, so a child
    would report its parent's peak; VmHWM starts afresh with the new program."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synthetic_log(settings: Settings, bench: Settings, name: str, rows: int) -> str:
    """Write `rows` logged predictions of the newest version of `name` and their labels."""
    from maquette import registry
    from maquette.data import sources as datasets

    versions = registry.list_versions(settings, name)
    if not versions:
        raise SystemExit(f"no registered version of {name}: run `maquette train {name}` first")
    version = versions[-1]
    features = version.record["feature_names"]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    flights = con.sql(
        "SELECT origin, carrier, tailnum, route, scheduled_departure, arr_delay, arrived_at "
        f"FROM read_parquet('{datasets.require_loaded(settings, 'flights')}') "
        "WHERE tailnum IS NOT NULL"
    ).df()
    rng = np.random.default_rng(7)
    picks = flights.iloc[rng.integers(0, len(flights), rows)].reset_index(drop=True)
    # A served-features JSON as wide as the model's: the bulk of a real log's bytes.
    values = rng.normal(size=(rows, len(features))).round(4)
    features_json = [
        "{" + ",".join(f'"{f}":{v}' for f, v in zip(features, row, strict=True)) + "}"
        for row in values
    ]
    sched = picks["scheduled_departure"]
    table = pa.table(
        {
            "prediction_id": [uuid.uuid4().hex for _ in range(rows)],
            "logged_at": pa.array(sched, pa.timestamp("us", tz="UTC")),
            "request_time": pa.array(sched, pa.timestamp("us", tz="UTC")),
            "model": [name] * rows,
            "version": [version.version] * rows,
            "partition": picks["origin"].astype(str),
            "shadow": [False] * rows,
            "prediction": picks["arr_delay"].fillna(0).to_numpy(float) + rng.normal(0, 20, rows),
            "decision": pa.nulls(rows, pa.bool_()),
            "latency_ms": rng.uniform(1, 5, rows),
            "entity": [
                json.dumps(r)
                for r in picks[["origin", "carrier", "tailnum", "route"]].to_dict("records")
            ],
            "request": [json.dumps({"scheduled_departure": t.isoformat()}) for t in sched],
            "features": features_json,
            "missing": pa.array([[] for _ in range(rows)], pa.list_(pa.string())),
            "stale": pa.array([[] for _ in range(rows)], pa.list_(pa.string())),
            "stream_id": [f"{i}-0" for i in range(rows)],
        }
    )
    folder = bench.path(bench.predictions.folder) / "date=2013-12-01" / f"model={name}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-bench.parquet", row_group_size=100_000)
    labels = flights.drop_duplicates(
        ["origin", "carrier", "tailnum", "route", "scheduled_departure"]
    )
    labels = labels.rename(columns={"arr_delay": "label"})[
        ["origin", "carrier", "tailnum", "route", "scheduled_departure", "label"]
    ]
    bench.offline_store.mkdir(parents=True, exist_ok=True)
    labels.to_parquet(bench.offline_store / "bench_labels.parquet", index=False)
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


def run_monitoring_benchmarks(
    settings: Settings, name: str, rows: int, drift_rows: int, console: Console
) -> str:
    """Run both cases; print a table and return it as Markdown."""
    with tempfile.TemporaryDirectory(prefix="maquette-bench-monitoring-") as scratch:
        bench = settings.model_copy(deep=True)
        bench.paths.offline_store = Path(scratch) / "offline"
        bench.paths.reports = Path(scratch) / "reports"
        bench.predictions.folder = Path(scratch) / "offline" / "predictions"
        with console.status(f"writing {rows:,} logged predictions"):
            _synthetic_log(settings, bench, name, rows)
        with console.status("label join + live metrics"):
            join = _child("join", bench.model_dump_json(), name)
        folder = Path(scratch) / "drift"
        folder.mkdir()
        _drift_data(folder, drift_rows, 20)
        with console.status("Evidently drift: stock"):
            stock = _child("drift_stock", bench.model_dump_json(), str(folder))
        with console.status("Evidently drift: Maquette"):
            mine = _child("drift_maquette", bench.model_dump_json(), str(folder))
    table = Table("case", "wall time", "peak RSS", "notes", title="Monitoring benchmarks")
    lines = ["| case | wall time | peak RSS | notes |", "|---|---|---|---|"]

    def add(case: str, result: dict[str, Any], notes: str) -> None:
        if "error" in result:
            cells = [case, "failed", "", result["error"][:80]]
        else:
            cells = [case, f"{result['seconds']:.2f} s", f"{result['rss_mb']:,.0f} MB", notes]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")

    add(
        f"label join + daily & hourly metrics, {rows:,} predictions",
        join,
        f"join alone {join.get('join_s', 0):.2f} s; {join.get('labelled', 0):,} labelled",
    )
    add(
        f"stock Evidently drift, {drift_rows:,} x 20",
        stock,
        f"drift share {stock.get('drift_share', 0):.2f}",
    )
    ratio = stock.get("seconds", 0) / mine["seconds"] if mine.get("seconds") else 0
    add(
        f"Maquette report path, sampled to {settings.monitoring.report_rows:,} / "
        f"{settings.monitoring.reference_rows:,}",
        mine,
        f"drift share {mine.get('drift_share', 0):.2f}; {ratio:.1f}x faster than stock",
    )
    console.print(table)
    return "\n".join(lines)
