"""`maquette bench cluster`: the online store on a local Redis Cluster next to one Redis.

Same machine, same run: Maquette's materialize of N synthetic entities x 10 float features, and
online reads of 1 and 100 entities (Maquette's reader, stock Feast's `get_online_features`), on
the project's bench Redis and on a three-master cluster started under `<state>/bench/cluster`.
On one machine the cluster cannot be faster (three servers share the same cores); what it shows
is what routing each command to its master costs the client.
"""

from __future__ import annotations

import shutil
from functools import partial
from typing import Any

from pydantic import SecretStr
from redis.cluster import RedisCluster
from rich.console import Console

from maquette.bench.features import _apply_bench_repo, _child, _write_bench_table
from maquette.bench.harness import (
    bench_dir,
    bench_settings,
    flush,
    latencies,
    results_table,
    settings_ref,
)
from maquette.bench.local_cluster import local_cluster
from maquette.config import Settings
from maquette.features.layer import FeatureLayer
from maquette.features.redis_cluster import cluster_client

HEADERS = ("case", "one Redis", "Redis Cluster, 3 masters", "cluster / one")


def run_cluster_benchmarks(settings: Settings, rows: int, repeats: int, console: Console) -> str:
    """Run the cluster cases, print the table, return it as Markdown."""
    single = bench_settings(settings)
    table = bench_dir(settings) / f"bench_{rows}.parquet"
    if not table.is_file():
        _write_bench_table(table, rows)
    folder = bench_dir(settings) / "cluster"
    shutil.rmtree(folder, ignore_errors=True)
    console.print("[bold]cluster benchmarks[/] (one Redis | a local three-master cluster)")
    with local_cluster(folder) as cluster:
        clustered = single.model_copy(deep=True)
        clustered.redis.cluster = cluster.nodes
        clustered.redis.password = SecretStr(cluster.password)
        clustered.feast.registry = bench_dir(settings) / "registry-cluster.db"
        sides = {"one": single, "cluster": clustered}
        cells = [_materialize(sides, rows, table, console)]
        ids = [{"bench_id": f"e{i}"} for i in range(0, rows, max(rows // 100, 1))][:100]
        for n in (1, 100):
            console.print(f"  online reads of {n} entities ...")
            cells += _online(sides, ids[:n], repeats)
    return results_table(console, "Redis Cluster", HEADERS, cells) + "\n"


def _materialize(
    sides: dict[str, Settings], rows: int, table: Any, console: Console
) -> tuple[str, str, str, str]:
    seconds = {}
    for side, cfg in sides.items():
        _apply_bench_repo(cfg, table)
        if side == "one":
            flush(cfg)
        else:
            cluster_client(cfg).flushall(target_nodes=RedisCluster.PRIMARIES)
        console.print(f"  materialize {rows:,} entities x 10 features, {side} ...")
        found = _child("materialize_maquette", settings_ref(cfg), str(rows))
        if "error" in found:
            raise RuntimeError(f"materialize on {side}: {found['error']}")
        seconds[side] = float(found["seconds"])
    one, many = seconds["one"], seconds["cluster"]
    return (
        f"Maquette materialize {rows:,} x 10 features (s, rows/s)",
        f"{one:.2f} s, {rows / one:,.0f}/s",
        f"{many:.2f} s, {rows / many:,.0f}/s",
        f"{many / one:.2f}x time",
    )


def _online(
    sides: dict[str, Settings], entities: list[dict[str, Any]], repeats: int
) -> list[tuple[str, str, str, str]]:
    mine, stock = {}, {}
    for side, cfg in sides.items():
        layer = FeatureLayer(cfg)
        service = layer.feature_service("bench")
        mine[side] = latencies(partial(layer.online_features, entities, "bench"), repeats)
        read = partial(layer.store.get_online_features, features=service, entity_rows=entities)
        stock[side] = latencies(read, repeats)
    n = len(entities)
    return [
        (
            f"{who} online read, {n} entit{'y' if n == 1 else 'ies'} (p50/p99 ms)",
            f"{found['one'][0]:.2f} / {found['one'][1]:.2f}",
            f"{found['cluster'][0]:.2f} / {found['cluster'][1]:.2f}",
            f"{found['cluster'][0] / found['one'][0]:.2f}x p50",
        )
        for who, found in (("Maquette", mine), ("stock Feast", stock))
    ]
