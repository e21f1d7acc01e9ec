"""Feature-layer benchmarks (`maquette bench features`): stock Feast, Maquette and the floor.

Materialize and training frames each run in a child process that reports its own wall time and
peak RSS. Online reads run in-process, many times, and report p50/p99. Output: a rich table and
the same as Markdown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from maquette.bench.dataset import (
    BenchDataset,
    bench_dataset,
    entity_rows,
    view_feature_refs,
)
from maquette.bench.harness import (
    bench_dir,
    bench_settings,
    flush,
    latencies,
    peak_rss_mb,
    results_table,
    run_child,
    settings_from_ref,
    settings_ref,
)
from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.redis_server import ensure_redis
from maquette.data.sql import duckdb_connection
from maquette.features import redis_layout as wire
from maquette.features.layer import FeatureLayer
from maquette.platform.demo import entity_frame

START, END = datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC)
HEADERS = ("case", "stock Feast", "Maquette", "floor", "ratio")


@dataclass
class Row:
    case: str
    stock: str
    maquette: str
    floor: str
    ratio: str  # stock / maquette (higher is better for Maquette)


# ---------------------------------------------------------------- the synthetic bench views


def _write_bench_table(path: Path, rows: int) -> None:
    rng = np.random.default_rng(7)
    ids = pa.array(np.char.add("e", np.arange(rows).astype(str)))
    ts = pa.array(
        np.full(rows, int(START.timestamp() * 1e6) + 3_600_000_000), pa.timestamp("us", tz="UTC")
    )
    cols = {"bench_id": ids, "event_timestamp": ts}
    cols |= {f"f{i}": pa.array(rng.normal(size=rows)) for i in range(10)}
    cols["g0"] = pa.array(rng.normal(size=rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def _apply_bench_repo(bench: Settings, table: Path) -> None:
    # Imported here: Feast takes seconds to import.
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    entity = Entity(name="bench_id", join_keys=["bench_id"], value_type=ValueType.STRING)
    source = FileSource(name="bench_source", path=str(table), timestamp_field="event_timestamp")
    wide = FeatureView(
        name="bench_wide",
        entities=[entity],
        ttl=timedelta(days=1),
        schema=[Field(name=f"f{i}", dtype=Float64) for i in range(10)],
        source=source,
    )
    narrow = FeatureView(
        name="bench_narrow",
        entities=[entity],
        ttl=timedelta(days=1),
        schema=[Field(name="g0", dtype=Float64)],
        source=source,
    )
    service = FeatureService(name="bench", features=[wide, narrow])
    bench.registry_path.parent.mkdir(parents=True, exist_ok=True)
    FeatureLayer(bench).store.apply([entity, source, wide, narrow, service])


# ---------------------------------------------------------------- child processes


def _child_main(kind: str, settings_json: str, arg: str) -> dict[str, Any]:
    """One heavy case, run by `harness.run_child` in a fresh interpreter."""
    import warnings

    warnings.filterwarnings("ignore")
    settings = settings_from_ref(settings_json)
    layer = FeatureLayer(settings)
    layer.store  # noqa: B018  (load Feast before the clock starts)
    began = time.perf_counter()
    if kind == "materialize_stock":
        layer.store.materialize(START, END, ["bench_wide"])
        rows = int(arg)
    elif kind == "materialize_maquette":
        rows = layer.materialize(START, END, ["bench_wide"]).rows_read["bench_wide"]
    else:
        rows, best = _best_frame(layer, kind, Path(arg))
        began = time.perf_counter() - best
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "rows": rows, "rss_mb": peak_rss_mb()}


def _best_frame(layer: FeatureLayer, kind: str, entities_path: Path) -> tuple[int, float]:
    """Training frames: (rows, best of two runs), both ways, as the floor is measured warm too."""
    entities = pq.read_table(entities_path)
    refs: Any = json.loads(kind.split(":", 1)[1])
    best, rows = float("inf"), 0
    for _ in range(2):
        began = time.perf_counter()
        if kind.startswith("frame_stock"):
            service = layer.feature_service(refs) if isinstance(refs, str) else refs
            rows = len(
                layer.store.get_historical_features(
                    entity_df=entities.to_pandas(), features=service
                ).to_df()
            )
        else:
            rows = layer.training_frame(entities, refs).num_rows
        best = min(best, time.perf_counter() - began)
    return rows, best


def _child(kind: str, settings_json: str, arg: str) -> dict[str, Any]:
    return run_child(__name__, kind, settings_json, arg)


def _fmt_run(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"failed: {result['error'][:60]}"
    return f"{result['seconds']:.2f} s, {result['rows'] / result['seconds']:,.0f} rows/s, {result['rss_mb']:,.0f} MB"


def _ratio(stock: dict[str, Any], mine: dict[str, Any]) -> str:
    if "error" in stock or "error" in mine:
        return "-"
    return f"{stock['seconds'] / mine['seconds']:.1f}x"


# ---------------------------------------------------------------- materialize


def _materialize_rows(
    settings: Settings, rows: int, stock_rows: int, console: Console
) -> list[Row]:
    bench = bench_settings(settings)
    results = {}
    for kind, n in (("materialize_stock", stock_rows), ("materialize_maquette", rows)):
        table = bench_dir(settings) / f"bench_{n}.parquet"
        if not table.is_file():
            _write_bench_table(table, n)
        _apply_bench_repo(bench, table)
        flush(bench)
        console.print(f"  {kind} of {n:,} entities x 10 features ...")
        results[kind] = _child(kind, settings_ref(bench), str(n))
    stock, mine = results["materialize_stock"], results["materialize_maquette"]
    ratio = "-"
    if "error" not in stock and "error" not in mine:
        ratio = (
            f"{(mine['rows'] / mine['seconds']) / (stock['rows'] / stock['seconds']):.1f}x rows/s"
        )
    case = f"materialize {rows:,} x 10 float features (stock: {stock_rows:,})"
    return [Row(case, _fmt_run(stock), _fmt_run(mine), "-", ratio)]


# ---------------------------------------------------------------- online reads


def _raw_floor(url: str, keys: list[bytes], fields: list[bytes]) -> Callable[[], Any]:
    """Pipelined redis-py HMGET of the same keys, every value decoded with protobuf."""
    import redis

    # Imported here: Feast takes seconds to import.
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    client = redis.Redis.from_url(url)

    def read() -> list[list[Any]]:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, fields)
        return [
            [ValueProto.FromString(v) if v else None for v in reply] for reply in pipe.execute()
        ]

    return read


def _online_cases(
    settings: Settings, dataset: BenchDataset
) -> list[tuple[str, Settings, str, list[dict[str, Any]]]]:
    """(label, settings, feature service, entity rows): the synthetic views, then the project's."""
    bench = bench_settings(settings)
    ids = [{"bench_id": f"e{i}"} for i in range(0, 100 * 997, 997)]
    cases = [("11 features, 2 views", bench, "bench", ids[:n]) for n in (1, 100)]
    service = settings.default_feature_service()
    columns = FeatureLayer(settings).request_keys(service)
    rows = entity_rows(settings, columns, dataset.online_rows_from)
    cases += [(f"service {service} (all views)", settings, service, rows[:n]) for n in (1, 100)]
    return cases


def _online_row(
    label: str, cfg: Settings, service: str, rows: list[dict[str, Any]], repeats: int
) -> Row:
    """One online-read case: stock `get_online_features`, Maquette, raw HMGET floor."""
    layer = FeatureLayer(cfg)
    stock_service = layer.feature_service(service)
    store = layer.store
    stock = latencies(
        lambda: store.get_online_features(features=stock_service, entity_rows=rows).to_dict(),
        repeats,
    )
    mine = latencies(lambda: layer.online_features(rows, service), repeats)
    plan = layer.read_plan(service)
    keys = [
        wire.entity_key_bytes({k: r[k] for k in g.join_keys}, g.key_types, cfg.feast.project)
        for g in plan.groups
        for r in rows
    ]
    fields = [f for g in plan.groups for f in g.fields]
    floor = latencies(_raw_floor(str(cfg.redis.url or ensure_redis(cfg)), keys, fields), repeats)
    return Row(
        f"online {label}, {len(rows)} entit{'y' if len(rows) == 1 else 'ies'} (p50/p99 ms)",
        f"{stock[0]:.2f} / {stock[1]:.2f}",
        f"{mine[0]:.2f} / {mine[1]:.2f}",
        f"{floor[0]:.2f} / {floor[1]:.2f}",
        f"{stock[0] / mine[0]:.1f}x; {mine[0] / floor[0]:.2f}x floor",
    )


def _online_rows(
    settings: Settings, dataset: BenchDataset, repeats: int, console: Console
) -> list[Row]:
    out = []
    for label, cfg, service, rows in _online_cases(settings, dataset):
        console.print(f"  online read: {label}, {len(rows)} entities ...")
        out.append(_online_row(label, cfg, service, rows, repeats))
    return out


# ---------------------------------------------------------------- training frames


def entities_file(settings: Settings, dataset: BenchDataset) -> tuple[Path, int]:
    """The entity source's rows with what the feature service needs, as a Parquet file."""
    keys = FeatureLayer(settings).request_keys(settings.default_feature_service())
    time_column = "event_timestamp"
    columns = [dataset.row_id] if dataset.row_id else []
    columns += [time_column, *(k for k in keys if k != time_column)]
    entities = entity_frame(settings).select(columns)
    path = bench_dir(settings) / "entities.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(entities, path)
    return path, entities.num_rows


def _floor_seconds(sql: str) -> float:
    """Best of three runs of the hand-written join."""
    con = duckdb_connection()
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        con.sql(sql).to_arrow_table()
        best = min(best, time.perf_counter() - began)
    return best


def _frame_cases(
    settings: Settings, dataset: BenchDataset, entities: Path
) -> list[tuple[str, str | list[str], str | None]]:
    """(label, feature service or refs, floor SQL): the dataset's few views, then the service."""
    cases: list[tuple[str, str | list[str], str | None]] = []
    if dataset.frame_views:
        view_refs = view_feature_refs(FeatureLayer(settings), dataset.frame_views)
        floor_sql = dataset.frame_floor_sql
        sql = floor_sql(settings.offline_store, entities) if floor_sql else None
        cases.append((" + ".join(dataset.frame_views), view_refs, sql))
    service = settings.default_feature_service()
    cases.append((f"service {service} (all views)", service, None))
    return cases


def _frame_rows(settings: Settings, dataset: BenchDataset, console: Console) -> list[Row]:
    path, count = entities_file(settings, dataset)
    out = []
    for label, refs, sql in _frame_cases(settings, dataset, path):
        console.print(f"  training frame: {label}, {count:,} rows ...")
        stock = _child(f"frame_stock:{json.dumps(refs)}", settings_ref(settings), str(path))
        mine = _child(f"frame_maquette:{json.dumps(refs)}", settings_ref(settings), str(path))
        floor = _floor_seconds(sql) if sql else None
        ratio = _ratio(stock, mine)
        if floor and "error" not in mine:
            ratio += f"; {mine['seconds'] / floor:.2f}x floor"
        case = f"training frame {label}, {count:,} rows"
        floor_txt = f"{floor:.2f} s" if floor else "-"
        out.append(Row(case, _fmt_run(stock), _fmt_run(mine), floor_txt, ratio))
    return out


def run_feature_benchmarks(
    settings: Settings, rows: int, stock_rows: int, repeats: int, console: Console
) -> str:
    """Run every feature benchmark, print the table, return it as Markdown."""
    ensure_redis(settings)
    datasets.require_loaded(settings, settings.entity_source())
    dataset = bench_dataset(settings)
    layer = FeatureLayer(settings)
    layer.materialize(datetime(1970, 1, 1, tzinfo=UTC), datetime.now(UTC))
    console.print("[bold]feature benchmarks[/] (stock Feast | Maquette | floor)")
    results = _materialize_rows(settings, rows, stock_rows, console)
    results += _online_rows(settings, dataset, repeats, console)
    results += _frame_rows(settings, dataset, console)
    cells = [(r.case, r.stock, r.maquette, r.floor, r.ratio) for r in results]
    return results_table(console, "feature layer", HEADERS, cells) + "\n"
