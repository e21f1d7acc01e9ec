"""The feature layer on a real Redis Cluster (three masters on loopback): Feast and Maquette
read and write the same keys, every master holds some, and moved slots are followed."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from maquette.bench.local_cluster import LocalCluster
from maquette.config import Settings, load_settings
from maquette.errors import ConfigError, StoreUnavailable
from maquette.features.layer import FeatureLayer
from maquette.features.redis_cluster import RoutedPipe, command_key
from maquette.features.redis_layout import RespWriter
from tests.conftest import make_project

pytestmark = pytest.mark.cluster

PERIOD = (datetime(2013, 1, 1, tzinfo=UTC), datetime(2014, 1, 2, tzinfo=UTC))


def _client(cluster: LocalCluster) -> RedisCluster[bytes]:
    nodes = [ClusterNode(n.split(":")[0], int(n.split(":")[1])) for n in cluster.nodes]
    return RedisCluster(startup_nodes=nodes, password=cluster.password)


def _dump(client: Any) -> dict[bytes, dict[bytes, bytes]]:
    return {key: client.hgetall(key) for key in client.scan_iter(count=10_000)}


def test_maquette_writes_on_the_cluster_what_feast_writes_there_and_on_one_redis(
    cluster_project: Settings, loaded_project: Settings, redis_cluster: LocalCluster
) -> None:
    layer, client = FeatureLayer(cluster_project), _client(redis_cluster)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    layer.store.materialize(*PERIOD)  # stock Feast, redis_type: redis_cluster
    stock = _dump(client)
    assert layer.clear_online() == len(stock) > 3_000
    assert _dump(client) == {}
    result = layer.materialize(*PERIOD)  # Maquette's writer, routed per master
    assert _dump(client) == stock
    assert sum(result.rows_written.values()) == 3_587
    # Feast's key layout does not depend on the store: the single Redis holds the same keys.
    single = redis.Redis.from_url(str(loaded_project.redis.url))
    assert {
        k for k in single.scan_iter(match=b"*" + cluster_project.feast.project.encode())
    } >= set(stock)
    # Every master holds a share of the entity keys.
    for node in redis_cluster.nodes:
        host, port = node.split(":")
        master = redis.Redis(host=host, port=int(port), password=redis_cluster.password)
        assert master.dbsize() > 500, node


def test_online_features_on_the_cluster_equal_feasts_read_and_the_single_redis(
    cluster_project: Settings, feature_layer: FeatureLayer
) -> None:
    layer = FeatureLayer(cluster_project)
    layer.materialize(*PERIOD)
    rows = [
        {
            "origin": o,
            "route": r,
            "carrier": c,
            "tailnum": t,
            "flight_id": i,
            "scheduled_departure": datetime(2013, 12, 30, 12, tzinfo=UTC),
        }
        for i, (o, r, c, t) in enumerate(
            itertools.product(
                ["JFK", "LGA", "EWR"],
                ["JFK-LAX", "LGA-ORD", "EWR-SFO"],
                ["AA", "UA", "B6"],
                ["N14228", "N24211"],
            )
        )
    ]
    service = layer.feature_service("flight_delay")
    ours = layer.online_features(rows, "flight_delay").to_dict()
    feast = layer.store.get_online_features(features=service, entity_rows=rows).to_dict()
    assert {name: feast[name] for name in ours} == ours
    assert ours == feature_layer.online_features(rows, "flight_delay").to_dict()
    assert any(v is not None for v in ours["route_arr_delay_28d"])


def _rows() -> list[dict[str, Any]]:
    products = itertools.product(
        ["JFK", "LGA", "EWR"], ["JFK-LAX", "LGA-ORD", "EWR-SFO"], ["AA", "UA", "B6"], ["N14228"]
    )
    when = datetime(2013, 12, 30, 12, tzinfo=UTC)
    return [
        {
            "origin": o,
            "route": r,
            "carrier": c,
            "tailnum": t,
            "flight_id": i,
            "scheduled_departure": when,
        }
        for i, (o, r, c, t) in enumerate(products)
    ]


def test_a_killed_master_fails_reads_clearly_then_serves_its_data_again(
    cluster_project: Settings, redis_cluster: LocalCluster
) -> None:
    layer = FeatureLayer(cluster_project)
    layer.materialize(*PERIOD)
    before = layer.online_features(_rows(), "flight_delay").to_dict()
    time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk
    victim = redis_cluster.processes[0]
    victim.kill()  # SIGKILL: no shutdown save; its slots have no master (no replicas here)
    victim.wait()
    with pytest.raises(StoreUnavailable) as down:
        FeatureLayer(cluster_project).online_features(_rows(), "flight_delay")
    assert "Redis Cluster" in down.value.message and redis_cluster.nodes[0] in str(down.value)
    redis_cluster.start(0)  # from its append-only file and nodes.conf
    redis_cluster.wait_until_ok()
    again = FeatureLayer(cluster_project).online_features(_rows(), "flight_delay").to_dict()
    assert again == before


def test_a_packed_commands_key_is_found_whatever_its_bytes() -> None:
    commands = [
        RespWriter.pack(["HMGET", b"key\r\n1", "a", "b"]),
        RespWriter.pack(["HSET", "{tag}k", "f", b"\x00\r\n"]),
    ]
    assert [command_key(c) for c in commands] == [b"key\r\n1", b"{tag}k"]


def test_moved_slots_are_followed_to_their_new_master(
    cluster_project: Settings, redis_cluster: LocalCluster
) -> None:
    client = _client(redis_cluster)
    keys = [f"moved-{i}".encode() for i in range(300)]
    for key in keys:
        client.set(key, key)
    pipe = RoutedPipe(cluster_project)
    try:
        # Every slot sent to the wrong master: each answers MOVED, the pipe reloads the map.
        pipe.owner = pipe.owner[5461:] + pipe.owner[:5461]
        replies = pipe.round_trip([RespWriter.pack(["GET", k]) for k in keys])
    finally:
        pipe.close()
        client.delete(*keys)
    assert replies == keys


def test_a_cluster_takes_the_place_of_redis_url_and_its_stream_keys_share_a_hash_tag(
    tmp_path: Path, redis_cluster: LocalCluster
) -> None:
    both = make_project(tmp_path / "both", "redis://h:1/0", redis={"cluster": redis_cluster.nodes})
    with pytest.raises(ConfigError, match=r"redis\.url and redis\.cluster are both set"):
        load_settings(both)
    alone = load_settings(make_project(tmp_path / "alone", None, redis={"cluster": ["a:1"]}))
    # One commit (MULTI) touches the stream, its state and dead letters: one slot.
    assert (alone.stream.stream, alone.stream.dead_letter) == (
        "{maquette:departures}",  # maquette.yaml's maquette:departures, tagged
        "{maquette:departures}:dead",
    )
    derived = make_project(
        tmp_path / "derived",
        None,
        redis={"cluster": ["a:1"]},
        stream={"stream": "clicks", "dead_letter": "clicks:rejected"},
    )
    assert load_settings(derived).stream.dead_letter == "{clicks}:rejected"
    apart = make_project(
        tmp_path / "apart",
        None,
        redis={"cluster": ["a:1"]},
        stream={"stream": "clicks", "dead_letter": "rejected-clicks"},
    )
    with pytest.raises(ConfigError, match=r"share a hash tag.*'\{clicks\}'"):
        load_settings(apart)
    tagged = make_project(
        tmp_path / "tagged",
        None,
        redis={"cluster": ["a:1"]},
        stream={"stream": "{clicks}", "dead_letter": "{clicks}:rejected"},
    )
    assert load_settings(tagged).stream.stream == "{clicks}"


def test_a_cluster_node_that_is_not_host_and_port_is_refused(tmp_path: Path) -> None:
    for node in ("redis://a:1", "[::1]:7000", "a:b"):
        folder = make_project(tmp_path / node.replace("/", "_"), None, redis={"cluster": [node]})
        with pytest.raises(ConfigError, match="cluster"):
            load_settings(folder)


def test_freshness_scans_every_master(cluster_project: Settings, loaded_project: Settings) -> None:
    from maquette.monitoring.freshness import freshness, is_streamed

    when = datetime(2014, 1, 1, tzinfo=UTC)
    layer = FeatureLayer(cluster_project)
    layer.materialize(*PERIOD)
    batch = {v.name for v in layer.feature_views() if not is_streamed(v)}
    on_cluster = {f.view: f.newest for f in freshness(cluster_project, when) if f.view in batch}
    on_one = {f.view: f.newest for f in freshness(loaded_project, when) if f.view in batch}
    assert on_cluster == on_one and all(on_cluster.values()) and len(on_cluster) >= 4


def test_the_service_reads_features_from_the_cluster_and_logs_there(
    production: dict[str, str],
    loaded_project: Settings,
    cluster_project: Settings,
    redis_cluster: LocalCluster,
) -> None:
    import json

    import httpx
    from pydantic import SecretStr

    from maquette.serving.library import load_model
    from maquette.serving.prediction_log import pending
    from tests.test_serving import running_service

    FeatureLayer(cluster_project).materialize(*PERIOD)
    on_cluster = loaded_project.model_copy(deep=True)  # the trained project's models, aliases
    on_cluster.redis.cluster = redis_cluster.nodes
    on_cluster.redis.password = SecretStr(redis_cluster.password)
    library = load_model("flight_delay@production", on_cluster)
    env = {
        "MAQUETTE_REDIS_CLUSTER": json.dumps(redis_cluster.nodes),
        "MAQUETTE_REDIS_PASSWORD": redis_cluster.password,
        "MAQUETTE_REDIS_URL": "",  # the project's own Redis: unset, everything on the cluster
    }
    on_cluster.redis.url = None
    logged_before = pending(on_cluster)
    when = datetime(2013, 12, 30, 12, tzinfo=UTC)
    rows = [{k: v for k, v in r.items() if k != "flight_id"} for r in _rows()[:6]]
    with running_service(loaded_project, env) as url:
        body = {
            "rows": [{**r, "scheduled_departure": when.isoformat()} for r in rows],
            "model": "flight_delay@production",
            "as_of": when.isoformat(),
        }
        reply = httpx.post(f"{url}/predict", json=body, timeout=10)
        # The features come from the cluster, not the project's single Redis (which still
        # holds them): emptied there, they are served as missing.
        cleared = FeatureLayer(cluster_project).clear_online()
        try:
            empty = httpx.post(f"{url}/predict", json=body, timeout=10).json()["predictions"]
        finally:
            FeatureLayer(cluster_project).materialize(*PERIOD)
    assert reply.status_code == 200, reply.text
    served = reply.json()["predictions"]
    expected = library.predict(rows, as_of=when)
    assert [p["prediction"] for p in served] == pytest.approx([a.prediction for a in expected])
    assert all(not p["missing_features"] for p in served)
    assert cleared > 0 and all("temp" in p["missing_features"] for p in empty)
    assert pending(on_cluster) == logged_before + 2  # one entry per request, on the cluster


def test_a_slot_being_migrated_is_read_on_its_target_after_asking(
    cluster_project: Settings, redis_cluster: LocalCluster
) -> None:
    from redis.crc import key_slot

    source, target = redis_cluster.clients()[:2]
    key = next(
        k
        for i in range(10_000)
        if (k := f"ask-{i}".encode()) and _owner(redis_cluster, key_slot(k)) == 0
    )
    slot = key_slot(key)
    source_id, target_id = (c.execute_command("CLUSTER MYID") for c in (source, target))
    target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
    pipe = RoutedPipe(cluster_project)
    try:
        moved_in = target.pipeline(transaction=False)  # one connection: ASKING, then SET
        moved_in.execute_command("ASKING")
        moved_in.set(key, b"on the target")
        moved_in.execute()
        # The source no longer has the key: it answers ASK, the pipe asks the target.
        assert pipe.round_trip([RespWriter.pack(["GET", key])]) == [b"on the target"]
    finally:
        pipe.close()
        cleanup = target.pipeline(transaction=False)
        cleanup.execute_command("ASKING")
        cleanup.delete(key)
        cleanup.execute()
        for client in (source, target):
            client.execute_command("CLUSTER SETSLOT", slot, "STABLE")


def _owner(cluster: LocalCluster, slot: int) -> int:
    """Which of the cluster's nodes (by index) serves `slot`."""
    for first, last, master, *_ in cluster.clients()[0].execute_command("CLUSTER SLOTS"):
        if first <= slot <= last:
            return cluster.nodes.index(f"127.0.0.1:{int(master[1])}")
    raise AssertionError(f"slot {slot} has no master")
