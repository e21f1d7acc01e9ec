"""Feature-layer benchmarks: the stock Feast way, Maquette's way and the raw floor, in one run.

Heavy cases (materialize, training frames) each run in a child process that reports its own
wall time and peak RSS, so one case's memory never hides in another's. Online reads run
in-process, many times, and report p50/p99. Output: a rich table and the same as Markdown.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
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
from rich.table import Table

from maquette.config import Settings
from maquette.data.redis_server import ensure_redis, redis_url

BENCH_PROJECT = "maquette_bench"
BENCH_DB = 1  # a Redis database of its own, flushed between cases
START, END = datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC)


@dataclass
class Row:
    case: str
    stock: str
    maquette: str
    floor: str
    ratio: str  # stock / maquette (higher is better for Maquette)


def _bench_dir(settings: Settings) -> Path:
    return settings.state_dir / "bench"


def _bench_settings(settings: Settings) -> Settings:
    """The project's settings pointed at a scratch Feast project and Redis database."""
    url = ensure_redis(settings).rsplit("/", 1)[0] + f"/{BENCH_DB}"
    bench = settings.model_copy(deep=True)
    bench.redis.url = url
    bench.feast.project = BENCH_PROJECT
    bench.feast.registry = _bench_dir(settings) / "registry.db"
    return bench


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
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    from maquette.features.layer import FeatureLayer

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


def _child(
    kind: str, settings_json: str, arg: str, module: str = "maquette.bench.cases"
) -> dict[str, Any]:
    """Run one heavy case (`module._child_main`) in a fresh interpreter; it prints a JSON dict
    ({"seconds", "rows", "rss_mb", ...}) on its last line."""
    code = (
        f"import json,sys; from {module} import _child_main; "
        f"print(json.dumps(_child_main({kind!r}, sys.argv[1], sys.argv[2])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, settings_json, arg],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_main(kind: str, settings_json: str, arg: str) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    from maquette.config import Settings
    from maquette.features.layer import FeatureLayer

    settings = Settings.model_validate_json(settings_json)
    layer = FeatureLayer(settings)
    layer.store  # noqa: B018  (load Feast before the clock starts)
    began = time.perf_counter()
    if kind == "materialize_stock":
        layer.store.materialize(START, END, ["bench_wide"])
        rows = int(arg)
    elif kind == "materialize_maquette":
        rows = layer.materialize(START, END, ["bench_wide"]).rows_read["bench_wide"]
    else:
        # Training frames: best of two runs for both ways, as the floor is measured warm too.
        entities = pq.read_table(arg)
        refs: Any = json.loads(kind.split(":", 1)[1])
        best = float("inf")
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
        began = time.perf_counter() - best
    seconds = time.perf_counter() - began
    from maquette.bench.monitoring import peak_rss_mb

    rss_mb = peak_rss_mb()
    return {"seconds": seconds, "rows": rows, "rss_mb": rss_mb}


def _fmt_run(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"failed: {result['error'][:60]}"
    return f"{result['seconds']:.2f} s, {result['rows'] / result['seconds']:,.0f} rows/s, {result['rss_mb']:,.0f} MB"


def _ratio(stock: dict[str, Any], mine: dict[str, Any]) -> str:
    if "error" in stock or "error" in mine:
        return "-"
    return f"{stock['seconds'] / mine['seconds']:.1f}x"


def _flush(bench: Settings) -> None:
    import redis

    redis.Redis.from_url(str(bench.redis.url)).flushdb()


def _materialize_rows(
    settings: Settings, rows: int, stock_rows: int, console: Console
) -> list[Row]:
    bench = _bench_settings(settings)
    out: list[Row] = []
    results = {}
    for kind, n in (("materialize_stock", stock_rows), ("materialize_maquette", rows)):
        table = _bench_dir(settings) / f"bench_{n}.parquet"
        if not table.is_file():
            _write_bench_table(table, n)
        _apply_bench_repo(bench, table)
        _flush(bench)
        console.print(f"  {kind} of {n:,} entities x 10 features ...")
        results[kind] = _child(kind, bench.model_dump_json(), str(n))
    stock, mine = results["materialize_stock"], results["materialize_maquette"]
    ratio = "-"
    if "error" not in stock and "error" not in mine:
        ratio = (
            f"{(mine['rows'] / mine['seconds']) / (stock['rows'] / stock['seconds']):.1f}x rows/s"
        )
    out.append(
        Row(
            f"materialize {rows:,} x 10 float features (stock: {stock_rows:,})",
            _fmt_run(stock),
            _fmt_run(mine),
            "-",
            ratio,
        )
    )
    return out


def _latencies(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    for _ in range(min(50, repeats)):
        fn()
    samples = []
    for _ in range(repeats):
        began = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - began) / 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def _raw_floor(url: str, keys: list[bytes], fields: list[bytes]) -> Callable[[], Any]:
    """Pipelined redis-py HMGET of the same keys, every value decoded with protobuf."""
    import redis
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


def _online_rows(settings: Settings, repeats: int, console: Console) -> list[Row]:
    from maquette.features import redis_layout as wire
    from maquette.features.layer import FeatureLayer
    from maquette.platform.demo import entity_frame

    out: list[Row] = []
    bench = _bench_settings(settings)
    cases: list[tuple[str, Settings, str, list[dict[str, Any]], dict[str, list[str]]]] = []
    ids = [{"bench_id": f"e{i}"} for i in range(0, 100 * 997, 997)]
    bench_views = {"bench_wide": [f"f{i}" for i in range(10)], "bench_narrow": ["g0"]}
    cases += [("11 features, 2 views", bench, "bench", ids[:n], bench_views) for n in (1, 100)]
    # Stock Feast cannot sort entity rows holding a null key (TypeError), so all keys are set.
    keep = ["origin", "tailnum", "carrier", "route", "scheduled_departure"]
    frame = entity_frame(settings).slice(300_000, 400).select(keep).drop_null()
    flights = frame.slice(0, 100).to_pylist()
    layer = FeatureLayer(settings)
    service = layer.feature_service(settings.feast.feature_service)
    views = {
        p.name: [f.name for f in p.features]
        for p in service.feature_view_projections
        if p.name in {v.name for v in layer.store.list_feature_views()}
    }
    cases += [
        (f"service {service.name} (all views)", settings, service.name, flights[:n], views)
        for n in (1, 100)
    ]
    for label, cfg, svc, rows, _ in cases:
        mine_layer = FeatureLayer(cfg)
        stock_service = mine_layer.feature_service(svc)
        key_rows = [{k: v for k, v in r.items() if k != "scheduled_departure"} for r in rows]
        console.print(f"  online read: {label}, {len(rows)} entities ...")
        store = mine_layer.store
        stock = _latencies(
            lambda s=stock_service, r=rows, fs=store: fs.get_online_features(  # type: ignore[misc]
                features=s, entity_rows=r
            ).to_dict(),
            repeats,
        )
        mine = _latencies(
            lambda layer=mine_layer, r=rows, n=svc: layer.online_features(r, n),  # type: ignore[misc]
            repeats,
        )
        plan = mine_layer._plan(svc)
        keys = [
            wire.entity_key_bytes({k: r[k] for k in g.join_keys}, g.key_types, cfg.feast.project)
            for g in plan.groups
            for r in key_rows
        ]
        fields = [f for g in plan.groups for f in g.fields]
        floor = _latencies(
            _raw_floor(str(cfg.redis.url or ensure_redis(cfg)), keys, fields), repeats
        )
        out.append(
            Row(
                f"online {label}, {len(rows)} entit{'y' if len(rows) == 1 else 'ies'} (p50/p99 ms)",
                f"{stock[0]:.2f} / {stock[1]:.2f}",
                f"{mine[0]:.2f} / {mine[1]:.2f}",
                f"{floor[0]:.2f} / {floor[1]:.2f}",
                f"{stock[0] / mine[0]:.1f}x; {mine[0] / floor[0]:.2f}x floor",
            )
        )
    return out


def _frame_rows(settings: Settings, console: Console) -> list[Row]:
    from maquette.platform.demo import entity_frame

    entities = entity_frame(settings).select(
        [
            "flight_id",
            "event_timestamp",
            "scheduled_departure",
            "origin",
            "tailnum",
            "carrier",
            "route",
        ]
    )
    path = _bench_dir(settings) / "entities.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(entities, path)
    weather_plane = [
        f"weather_hourly:{f}"
        for f in (
            "temp",
            "dewp",
            "humid",
            "wind_dir",
            "wind_speed",
            "wind_gust",
            "precip",
            "pressure",
            "visib",
        )
    ] + [
        f"plane:{f}" for f in ("year_built", "seats", "engines", "plane_manufacturer", "plane_type")
    ]
    out = []
    for label, refs in (
        ("weather_hourly + plane", weather_plane),
        (f"service {settings.feast.feature_service} (all views)", settings.feast.feature_service),
    ):
        console.print(f"  training frame: {label}, {entities.num_rows:,} rows ...")
        stock = _child(f"frame_stock:{json.dumps(refs)}", settings.model_dump_json(), str(path))
        mine = _child(f"frame_maquette:{json.dumps(refs)}", settings.model_dump_json(), str(path))
        floor = _raw_asof_floor(settings, path) if isinstance(refs, list) else None
        floor_txt = f"{floor:.2f} s" if floor else "-"
        ratio = _ratio(stock, mine)
        if floor and "error" not in mine:
            ratio += f"; {mine['seconds'] / floor:.2f}x floor"
        out.append(
            Row(
                f"training frame {label}, {entities.num_rows:,} rows",
                _fmt_run(stock),
                _fmt_run(mine),
                floor_txt,
                ratio,
            )
        )
    return out


def _raw_asof_floor(settings: Settings, entities: Path) -> float:
    """A hand-written DuckDB ASOF join of weather (3 h TTL) and plane: the floor to compare with."""
    import duckdb

    off = settings.offline_store
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    sql = f"""SELECT e.*, CASE WHEN w.event_timestamp + INTERVAL 3 HOUR >= e.event_timestamp THEN w.temp END,
      w.dewp, w.humid, w.wind_dir, w.wind_speed, w.wind_gust, w.precip, w.pressure, w.visib,
      p.year_built, p.seats, p.engines, p.plane_manufacturer, p.plane_type
    FROM read_parquet('{entities}') e
    ASOF LEFT JOIN read_parquet('{off / "weather_hourly.parquet"}') w
      ON e.origin = w.origin AND e.event_timestamp >= w.event_timestamp
    ASOF LEFT JOIN read_parquet('{off / "plane.parquet"}') p
      ON e.tailnum = p.tailnum AND e.event_timestamp >= p.event_timestamp"""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        con.sql(sql).to_arrow_table()
        best = min(best, time.perf_counter() - began)
    return best


def run_feature_benchmarks(
    settings: Settings, rows: int, stock_rows: int, repeats: int, console: Console
) -> str:
    """Run every feature benchmark, print the table, return it as Markdown."""
    from maquette.data import sources as datasets
    from maquette.features.layer import FeatureLayer

    ensure_redis(settings)
    datasets.require_loaded(settings, "weather_hourly")
    layer = FeatureLayer(settings)
    layer.materialize(datetime(1970, 1, 1, tzinfo=UTC), datetime.now(UTC))
    console.print("[bold]feature benchmarks[/] (stock Feast | Maquette | floor)")
    results = _materialize_rows(settings, rows, stock_rows, console)
    results += _online_rows(settings, repeats, console)
    results += _frame_rows(settings, console)
    table = Table("case", "stock Feast", "Maquette", "floor", "ratio", title="feature layer")
    lines = ["| case | stock Feast | Maquette | floor | ratio |", "|---|---|---|---|---|"]
    for r in results:
        table.add_row(r.case, r.stock, r.maquette, r.floor, r.ratio)
        lines.append(f"| {r.case} | {r.stock} | {r.maquette} | {r.floor} | {r.ratio} |")
    console.print(table)
    return "\n".join(lines) + "\n"


def _scratch_project(settings: Settings, folder: Path) -> Path:
    """A project file with the same settings (absolute paths) but its own model store."""
    import yaml

    data = settings.model_dump(mode="json", exclude={"project_dir"})
    data["paths"] = {k: str(settings.path(Path(v))) for k, v in data["paths"].items()}
    data["feast"]["registry"] = str(settings.registry_path)
    data["dataset"]["sources"] = {
        k: str(settings.path(Path(v))) for k, v in data["dataset"]["sources"].items()
    }
    if data["dataset"]["feature_sql"]:
        data["dataset"]["feature_sql"] = str(settings.path(Path(data["dataset"]["feature_sql"])))
    # Benchmark versions go to a scratch model store and alias table, never the real ones.
    data["registry"] = {
        "bentoml_home": str(folder / "bentoml"),
        "aliases": str(folder / "aliases.json"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "maquette.yaml").write_text(yaml.safe_dump(data))
    return folder


def run_training_benchmark(settings: Settings, name: str, trials: int, console: Console) -> str:
    """The `train` flow on a running Prefect server next to the same steps as plain calls."""
    from prefect.testing.utilities import prefect_test_harness

    from maquette.cli import _flow
    from maquette.config import load_settings
    from maquette.training import pipeline as training

    folder = _scratch_project(settings, _bench_dir(settings) / "training")
    scratch = load_settings(folder)
    console.print(
        f"[bold]training benchmark[/]: {name}, {trials} trials, best of 2 each, alternating"
    )
    training.train(scratch, name, 1)  # warm-up (imports, caches), not timed
    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        startup = time.perf_counter() - started
        flow = _flow(settings, "train")
        plain = flowed = float("inf")
        for round_ in range(2):
            began = time.perf_counter()
            training.train(scratch, name, trials)
            plain = min(plain, time.perf_counter() - began)
            began = time.perf_counter()
            flow(name, trials, str(folder))
            flowed = min(flowed, time.perf_counter() - began)
            console.print(
                f"  round {round_ + 1}: plain {plain:.1f} s, flow {flowed:.1f} s (best so far)"
            )
    overhead = 100 * (flowed - plain) / plain
    table = Table("case", "seconds", title="train: Prefect flow vs plain calls")
    for label, value in (
        ("plain calls", plain),
        ("Prefect flow (server already up)", flowed),
        ("Prefect server start (once per platform)", startup),
    ):
        table.add_row(label, f"{value:.1f}")
    table.add_row("[bold]flow overhead[/]", f"{overhead:+.1f}%")
    console.print(table)
    return f"| {name}, {trials} trials | {plain:.1f} s | {flowed:.1f} s | {overhead:+.1f}% | {startup:.1f} s |\n"


def _wrk(url: str, body: str, connections: int, seconds: int) -> dict[str, float]:
    """wrk (C, pipelined sockets) against `url`: req/s, p50/p95/p99 in ms, errors."""
    import os
    import shutil
    import tempfile

    if not shutil.which("wrk"):
        raise RuntimeError(
            "wrk is not installed: `apt-get install wrk` (the Makefile's bench target does it)"
        )
    script = Path(__file__).resolve().parents[2] / "tests" / "bench" / "wrk_post.lua"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        handle.write(body)
    env = {**os.environ, "WRK_BODY_FILE": handle.name}
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        return {"error": 1.0}
    rps, p50, p95, p99, errors = (float(v) for v in line.split()[1:])
    return {"rps": rps, "p50": p50, "p95": p95, "p99": p99, "errors": errors}


def _wait_http(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise TimeoutError(url)


def run_serving_benchmark(settings: Settings, seconds: int, console: Console) -> str:
    """Maquette's service, the stock composition and the bare floor, one at a time, same run."""
    import os

    from maquette.platform.demo import entity_frame

    root = Path(__file__).resolve().parents[2]
    keep = ["origin", "carrier", "tailnum", "route", "scheduled_departure"]
    flights = (
        entity_frame(settings)
        .slice(330_000, 400)
        .select(keep)
        .drop_null()
        .slice(0, 100)
        .to_pylist()
    )
    rows = [
        {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
        for r in flights
    ]
    maquette = [sys.executable, "-m", "bentoml", "serve", "bentos.service:PredictionService"]
    servers = {
        "Maquette service": maquette,
        "Maquette, BentoML's API path": maquette,
        "stock: BentoML + get_online_features": [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "tests.bench.stock_service:StockService",
        ],
        "floor: bare Starlette, no features": [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.bench.bare_asgi:app",
            "--log-level",
            "warning",
        ],
    }
    results: dict[tuple[str, str], dict[str, float]] = {}
    for label, command in servers.items():
        port = _free_port()
        flag = ["--port", str(port)] + (["--host", "127.0.0.1"] if "uvicorn" in command[2] else [])
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")},
            "MAQUETTE_PROJECT_DIR": str(settings.project_dir),
            "PYTHONWARNINGS": "ignore",
            # Logging stays on, into a stream of its own: bench traffic must not reach the
            # project's prediction log (and monitoring); it is deleted after each server.
            "MAQUETTE_PREDICTIONS_STREAM": BENCH_PREDICTIONS,
            "MAQUETTE_SERVING_FAST_PATH": "false" if "API path" in label else "true",
        }
        proc = subprocess.Popen(
            command + flag,
            cwd=root,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/predict"
        try:
            _wait_http(f"http://127.0.0.1:{port}/")
            _wrk(url, json.dumps({"rows": rows[:1]}), 2, 3)  # warm-up
            for case, body, conns in [
                ("1 row, c=1", rows[:1], 1),
                ("1 row, c=8", rows[:1], 8),
                ("1 row, c=32", rows[:1], 32),
                ("100 rows, c=8", rows, 8),
            ]:
                console.print(f"  {label}: {case} ...")
                results[(label, case)] = _wrk(url, json.dumps({"rows": body}), conns, seconds)
        finally:
            import signal

            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            logged = _bench_log_length_and_clear(settings)
            if label.startswith("Maquette"):
                console.print(f"  {label}: {logged:,} predictions logged")
    table = Table(
        "case", *servers, title=f"serving: req/s and p50/p95/p99 ms ({seconds}s per cell, wrk)"
    )
    lines = ["| case | " + " | ".join(servers) + " |", "|---|" + "---|" * len(servers)]
    for case in ("1 row, c=1", "1 row, c=8", "1 row, c=32", "100 rows, c=8"):
        cells = []
        for label in servers:
            r = results[(label, case)]
            cells.append(
                "failed"
                if "error" in r
                else f"{r['rps']:,.0f} req/s; {r['p50']:.2f} / {r['p95']:.2f} / {r['p99']:.2f}"
                + (f"; {r['errors']:.0f} errors" if r["errors"] else "")
            )
        table.add_row(case, *cells)
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    console.print(table)
    return "\n".join(lines) + "\n"


BENCH_PREDICTIONS = "maquette:bench:predictions"


def _bench_log_length_and_clear(settings: Settings) -> int:
    import redis

    client = redis.Redis.from_url(redis_url(settings))
    logged = int(client.xlen(BENCH_PREDICTIONS))
    client.delete(BENCH_PREDICTIONS)
    return logged


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- speed layer (issue 6)

STREAM_BENCH = "maquette:bench:departures"


@dataclass
class _StreamCase:
    label: str
    feast_push: bool
    rate: float | None  # offered events/s; None: a backlog published before the processor starts
    events: int


def _stream_bench_settings(settings: Settings) -> Settings:
    """The bench's Redis database and Feast project, a stream of its own, no warm start."""
    bench = _bench_settings(settings)
    bench.stream.stream, bench.stream.dead_letter = STREAM_BENCH, f"{STREAM_BENCH}:dead"
    bench.stream.backfill_before = None
    return bench


def _apply_stream_views(bench: Settings) -> None:
    """The stream views, as in feature_repo/, with batch sources in the bench folder."""
    from feast import Entity, FeatureView, FileSource, PushSource, ValueType

    from maquette.features.layer import FeatureLayer
    from maquette.stream.processor import AGGREGATIONS

    objects: list[Any] = []
    for agg in AGGREGATIONS:
        entity = Entity(name=agg.key, join_keys=[agg.key], value_type=ValueType.STRING)
        path = _bench_dir(bench) / "stream" / f"{agg.view}.parquet"
        batch = FileSource(
            name=f"{agg.view}_source", path=str(path), timestamp_field="event_timestamp"
        )
        push = PushSource(name=agg.push_source, batch_source=batch)
        view = FeatureView(
            name=agg.view,
            entities=[entity],
            ttl=agg.window,
            schema=agg.feast_schema(),
            source=push,
        )
        objects += [entity, push, view]
    bench.registry_path.parent.mkdir(parents=True, exist_ok=True)
    FeatureLayer(bench).store.apply(objects)


def _stream_child_main(settings_json: str, feast_push: str) -> None:
    """The processor in its own interpreter: "ready" once set up, its result as JSON at SIGTERM."""
    import signal
    import threading
    import warnings

    warnings.filterwarnings("ignore")
    from maquette.stream.processor import StreamProcessor

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    processor = StreamProcessor(Settings.model_validate_json(settings_json), feast_push == "1")
    print("ready", flush=True)
    result = processor.run(stop=stop)
    print(json.dumps(vars(result)), flush=True)


def _publisher_child_main(settings_json: str, rate: str, limit: str) -> None:
    from maquette.stream.processor import replay

    settings = Settings.model_validate_json(settings_json)
    replay(settings, datetime(2013, 1, 1, tzinfo=UTC), rate=float(rate), limit=int(limit))


def _python(code: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], text=True, start_new_session=True, **popen
    )


class _Prober:
    """Polls what `online_features` can read: per (view, key), the newest event time visible."""

    def __init__(self, bench: Settings, origins: list[str], carriers: list[str]) -> None:
        import redis

        from maquette.features import redis_layout as wire
        from maquette.features.layer import FeatureLayer
        from maquette.stream.processor import AGGREGATIONS, STAMP_OFFSET_US, _feast_type

        self.layer = FeatureLayer(bench)
        self.client = redis.Redis.from_url(str(bench.redis.url))
        self.offset = STAMP_OFFSET_US
        self.wire = wire
        keys = {"origin": origins, "carrier": carriers}
        self.slots = [(a.view, k) for a in AGGREGATIONS for k in keys[a.key]]
        self.reads = [
            (
                wire.entity_key_bytes(
                    {a.key: k}, {a.key: _feast_type("string")}, bench.feast.project
                ),
                wire.ts_field(a.view),
            )
            for a in AGGREGATIONS
            for k in keys[a.key]
        ]
        width = max(len(origins), len(carriers))
        self.rows = [
            {"origin": origins[i % len(origins)], "carrier": carriers[i % len(carriers)]}
            for i in range(width)
        ]
        self.features = [f"{a.view}:{n}" for a in AGGREGATIONS for n in a.feature_names]
        self.times: list[float] = []
        self.visible: list[list[int]] = []

    def poll(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, field in self.reads:
            pipe.hget(key, field)
        stamps = pipe.execute()
        # Read the timestamps first: the values read next are at least that new.
        self.layer.online_features(self.rows, self.features)
        now = time.time()
        seen = []
        for raw in stamps:
            seconds = self.wire.decode_timestamp_seconds(raw)
            seen.append(-1 if seconds is None else round(seconds * 1e6) - self.offset)
        self.times.append(now)
        self.visible.append(seen)

    def newest(self) -> dict[tuple[str, str], int]:
        return dict(zip(self.slots, self.visible[-1], strict=True)) if self.visible else {}

    def readable_at(self, events: list[tuple[float, str, str, int]]) -> np.ndarray:
        """For each (published, origin, carrier, event µs): when both its rows were readable."""
        times = np.array(self.times)
        visible = np.maximum.accumulate(np.array(self.visible), axis=0)
        column = {slot: i for i, slot in enumerate(self.slots)}
        out = np.full(len(events), np.inf)
        for j, (_, origin, carrier, when) in enumerate(events):
            ready = -np.inf
            for slot in (("origin_last_hour", origin), ("carrier_last_hour", carrier)):
                seen = visible[:, column[slot]]
                i = int(np.searchsorted(seen, when, side="left"))
                ready = max(ready, times[i] if i < len(times) else np.inf)
            out[j] = ready
        return out


def _stream_case(
    settings: Settings, bench: Settings, case: _StreamCase, extra_s: float
) -> dict[str, Any]:
    """One processor run against one publishing pattern, lag measured by polling reads."""
    import redis

    from maquette.stream import processor as stream

    _flush(bench)
    for path in (_bench_dir(bench) / "stream").glob("*.parquet"):
        path.unlink()
    bench_json = bench.model_dump_json()
    events = _published_events(settings, case.events)
    prober = _Prober(bench, sorted({e[1] for e in events}), sorted({e[2] for e in events}))
    prober.poll()
    if case.rate is None:  # a backlog: everything waits in the stream before the processor starts
        stream.replay(bench, datetime(2013, 1, 1, tzinfo=UTC), speed=None, limit=case.events)
    processor = _python(
        "import sys; from maquette.bench.cases import _stream_child_main as m; m(*sys.argv[1:])",
        bench_json,
        "1" if case.feast_push else "0",
        stdout=subprocess.PIPE,
    )
    assert processor.stdout is not None
    if processor.stdout.readline().strip() != "ready":
        processor.wait(30)
        return {"label": case.label, "error": "the processor did not start"}
    began = time.time()
    publisher = None
    if case.rate:
        publisher = _python(
            "import sys; from maquette.bench.cases import _publisher_child_main as m; m(*sys.argv[1:])",
            bench_json,
            str(case.rate),
            str(case.events),
        )
    _, last_origin, last_carrier, last_time = events[-1]
    deadline = None if publisher else began + extra_s + case.events / 1_000
    while True:
        prober.poll()
        newest = prober.newest()
        seen = min(
            newest[("origin_last_hour", last_origin)], newest[("carrier_last_hour", last_carrier)]
        )
        if seen >= last_time:
            break
        if publisher and deadline is None and publisher.poll() is not None:
            deadline = time.time() + extra_s
        if deadline and time.time() > deadline:
            break
        time.sleep(0.005)
    end = time.time()
    if publisher and publisher.poll() is None:
        publisher.terminate()
    processor.terminate()
    out, _ = processor.communicate(timeout=180)
    client = redis.Redis.from_url(str(bench.redis.url))
    published = [
        (int(i.split(b"-")[0]) / 1000, f[b"origin"].decode(), f[b"carrier"].decode(), _us(f))
        for i, f in client.xrange(STREAM_BENCH)
    ]
    ready = prober.readable_at(published)
    sent = np.array([p[0] for p in published])
    readable = np.isfinite(ready)
    # Events never readable within the run count with the lag they had reached by its end.
    lags = np.where(readable, ready, end) - sent
    first = sent.min() if case.rate else began
    span = ready[readable].max() - first if readable.any() else float("nan")
    return {
        "label": case.label,
        "published": len(published),
        "readable": int(readable.sum()),
        "rate": readable.sum() / span,
        "p50": float(np.percentile(lags, 50)),
        "p99": float(np.percentile(lags, 99)),
        "bounded": not readable.all(),
        "backlog": case.rate is None,
        "processor": json.loads(out.strip().splitlines()[-1]) if out.strip() else {},
        "polls": len(prober.times),
        "lags": lags,
        "sent": sent,
    }


def _us(fields: dict[bytes, bytes]) -> int:
    when = datetime.fromisoformat(fields[b"departed_at"].decode())
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _published_events(settings: Settings, limit: int) -> list[tuple[float, str, str, int]]:
    """The (_, origin, carrier, event µs) of the departures the bench publishes, in order."""
    import duckdb

    from maquette.stream.processor import events_sql

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    sql = events_sql(settings, datetime(2013, 1, 1, tzinfo=UTC)) + f" LIMIT {limit}"
    rows = con.sql(f"SELECT origin, carrier, epoch_us(departed_at) FROM ({sql})").fetchall()
    return [(0.0, o, c, t) for o, c, t in rows]


def run_stream_benchmark(
    settings: Settings, seconds: float, stock_seconds: float, backlog: int, console: Console
) -> str:
    """Maquette's processor and stock `FeatureStore.push`, at 1,000 and 5,000 events/s."""
    from maquette.data import sources as datasets

    ensure_redis(settings)
    datasets.require_loaded(settings, settings.stream.events_source or "flights")
    bench = _stream_bench_settings(settings)
    _apply_stream_views(bench)
    cases = [
        _StreamCase("Maquette, 1,000 events/s", False, 1_000, int(1_000 * seconds)),
        _StreamCase("Maquette, 5,000 events/s", False, 5_000, int(5_000 * seconds)),
        _StreamCase(f"Maquette, backlog of {backlog:,}", False, None, backlog),
        _StreamCase("stock push, 1,000 events/s", True, 1_000, int(1_000 * stock_seconds)),
        _StreamCase("stock push, 5,000 events/s", True, 5_000, int(5_000 * stock_seconds)),
    ]
    console.print("[bold]speed layer benchmark[/] (publish -> readable by online_features)")
    rows = []
    for case in cases:
        console.print(f"  {case.label}: {case.events:,} events ...")
        extra = 10.0 if case.feast_push else 20.0
        rows.append(_stream_case(settings, bench, case, extra))
    table = Table(
        "case",
        "published",
        "readable in run",
        "sustained events/s",
        "lag p50 ms",
        "lag p99 ms",
        title="speed layer: sustained rate and freshness lag",
    )
    lines = [
        "| case | published | readable in run | sustained events/s | lag p50 ms | lag p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            cells = [r.get("label", "?"), "failed", "-", "-", "-", "-"]
        else:
            # A backlog was published before the processor started: its lag says nothing.
            mark = ">= " if r["bounded"] else ""
            lags = [f"{mark}{r[p] * 1000:,.0f}" for p in ("p50", "p99")]
            cells = [
                r["label"],
                f"{r['published']:,}",
                f"{r['readable']:,}",
                f"{r['rate']:,.0f}",
                *(["-", "-"] if r["backlog"] else lags),
            ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    return "\n".join(lines) + "\n"
