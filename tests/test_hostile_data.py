"""Hostile data never stops the platform: drains that collide, a full Redis, a label file
holding "N/A", request times in year 1 or 9999, stream events from the year 9999.

Everything runs on real components: Redis database 15 of the session's redis-server (or a
redis-server of the test's own where its settings change), real Parquet, real DuckDB, real Feast.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis
import yaml
from feast.types import Int64, String

from maquette.config import Settings, load_settings
from maquette.data.redis_server import (
    redis_server_binary,
    redis_url,
    server_command,
    wait_until_ready,
)
from maquette.errors import ConfigError, InvalidEntityFrame, StoreUnavailable
from maquette.features import redis_layout as wire
from maquette.features.layer import FeatureLayer
from maquette.features.redis_cluster import shared_client
from maquette.monitoring import labels
from maquette.monitoring.drift import windows_of
from maquette.monitoring.skew import typed_entities
from maquette.serving import prediction_log as predictions
from maquette.stream import operations
from maquette.stream.aggregations import stream_definition
from maquette.stream.events import publish, trim_acknowledged
from maquette.stream.processor import StreamProcessor
from maquette.stream.targets import resolve_targets
from maquette.stream.windows import MAX_TIME_FIELD, state_key
from maquette.window_spec import parse_window
from tests.conftest import free_port, make_project
from tests.test_stream import apply_own_repo

T10 = datetime(2024, 6, 1, 10, tzinfo=UTC)


def _db15(running_redis: str) -> str:
    return running_redis.rsplit("/", 1)[0] + "/15"


def _project(folder: Path, redis_url: str, **predictions_settings: Any) -> Settings:
    """A small project (one regression model, labels keyed by user and time) on its own stream."""
    window = {"start": "2024-01-01", "end": "2024-02-01"}
    config = {
        "redis": {"url": redis_url},
        "predictions": {"stream": f"test-hostile:{uuid.uuid4().hex}", **predictions_settings},
        "dataset": {"entity_source": "ratings"},
        "models": {
            "rating": {
                "task": "regression",
                "label": "rating",
                "feature_service": "rating",
                "split": {"train": window, "validation": window, "test": window},
                "labels": {
                    "join_keys": ["user_id"],
                    "time_column": "rated_at",
                    "time_from": "request",
                },
            }
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "maquette.yaml").write_text(yaml.safe_dump(config))
    return load_settings(folder)


def _entry(pid: str | list[str], when: datetime | str, **extra: Any) -> dict[str, Any]:
    stamp = when.isoformat() if isinstance(when, datetime) else when
    return {
        "prediction_id": pid,
        "logged_at": datetime.now(UTC).isoformat(),
        "request_time": stamp,
        "model": "rating",
        "version": "v1",
        "partition": "__all__",
        "shadow": False,
        "prediction": 3.0,
        "decision": None,
        "latency_ms": 1.0,
        "entity": {"user_id": 1},
        "request": {},
        "features": {},
        "missing": [],
        "stale": [],
        **extra,
    }


def _ids_on_disk(settings: Settings) -> list[str]:
    """Prediction ids of every drained Parquet file, copies included (each file must read)."""
    folder = settings.path(settings.predictions.folder)
    ids: list[str] = []
    for path in sorted(folder.glob("date=*/model=*/*.parquet")):
        ids += pq.read_table(path, columns=["prediction_id"])["prediction_id"].to_pylist()
    return ids


# ---------------------------------------------------------------- the drain


_WRITER = """
import sys, time
from datetime import UTC, datetime
from maquette.config import load_settings
from maquette.serving.prediction_log import PredictionLog
settings = load_settings(sys.argv[1])
log, n, end = PredictionLog(settings), 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    now = datetime.now(UTC).isoformat()
    log.append([{"prediction_id": f"w-{n + i}", "logged_at": now, "request_time": now,
                 "model": "rating", "version": "v1", "shadow": False, "prediction": 1.0,
                 "entity": {"user_id": n + i}} for i in range(25)])
    n += 25
    time.sleep(0.02)
print(n)
"""

_DRAINER = """
import sys, time
from maquette.config import load_settings
from maquette.serving import prediction_log as predictions
settings = load_settings(sys.argv[1])
moved, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    moved += predictions.drain(settings).entries
print(moved)
"""


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(
    params=["one stream", "three shards", pytest.param("cluster", marks=pytest.mark.cluster)]
)
def log_store(request: pytest.FixtureRequest, running_redis: str) -> dict[str, Any]:
    """Where a test's prediction log lives: one stream, three shards on one Redis, or three
    shards on the session's Redis Cluster (each master holding one)."""
    if request.param == "one stream":
        return {"redis": {"url": _db15(running_redis)}, "predictions": {}}
    sharded = {"redis": {"url": _db15(running_redis)}, "predictions": {"shards": 3}}
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        sharded["redis"] = {"url": None, "cluster": cluster.nodes, "password": cluster.password}
    return sharded


def test_two_drains_at_once_under_a_writer_put_every_entry_in_exactly_one_parquet_file(
    tmp_path: Path, log_store: dict[str, Any]
) -> None:
    settings = _project(
        tmp_path / "p",
        log_store["redis"]["url"] or "redis://unused:1/0",
        drain_batch=30,
        **log_store["predictions"],
    )
    if log_store["redis"].get("cluster"):
        config = yaml.safe_load((settings.project_dir / "maquette.yaml").read_text())
        config["redis"] = log_store["redis"]
        (settings.project_dir / "maquette.yaml").write_text(yaml.safe_dump(config))
        settings = load_settings(settings.project_dir)
    project = str(settings.project_dir)
    writer = _python(_WRITER, project, "6")
    drains = [_python(_DRAINER, project, "6") for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in (writer, *drains)]
    for process, (_, err) in zip((writer, *drains), outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    written = int(outputs[0][0])
    moved = sum(int(out) for out, _ in outputs[1:]) + predictions.drain(settings).entries
    assert written > 100
    # Every entry in exactly one file, every file readable, nothing left in Redis.
    on_disk = _ids_on_disk(settings)
    assert len(on_disk) == len(set(on_disk)), "an entry was written to two files"
    assert sorted(on_disk) == sorted(f"w-{i}" for i in range(written))
    assert moved == written
    assert predictions.pending(settings) == 0
    client = shared_client(settings)
    streams = predictions.shard_streams(settings)
    for stream in streams:
        assert client.xpending(stream, predictions.GROUP)["pending"] == 0
    folder = settings.path(settings.predictions.folder)
    assert not list(folder.glob("**/*.tmp")), "a temporary file was left behind"
    if len(streams) > 1:  # every shard was written to and drained into files of its own
        names = {f.name for f in folder.glob("date=*/model=*/*.parquet")}
        assert {n.split("-")[1] for n in names} == {"s0", "s1", "s2"}, names


@pytest.mark.cluster
def test_a_sharded_log_puts_one_shard_on_each_master_and_drains_what_was_logged_unsharded(
    tmp_path: Path, running_redis: str, redis_cluster: Any
) -> None:
    settings = _project(tmp_path / "p", _db15(running_redis))
    config = yaml.safe_load((settings.project_dir / "maquette.yaml").read_text())
    config["redis"] = {"cluster": redis_cluster.nodes, "password": redis_cluster.password}
    # A name whose shards are :0, :1, :2-1 with three and :0 ... :3 with four.
    config["predictions"]["stream"] = "test-hostile:reshard"
    (settings.project_dir / "maquette.yaml").write_text(yaml.safe_dump(config))
    unsharded = load_settings(settings.project_dir)
    predictions.PredictionLog(unsharded).append([_entry("before", T10)])
    config["predictions"]["shards"] = 3
    (settings.project_dir / "maquette.yaml").write_text(yaml.safe_dump(config))
    sharded = load_settings(settings.project_dir)
    log = predictions.PredictionLog(sharded)
    for i in range(6):
        log.append([_entry(f"after-{i}", T10)])
    client = shared_client(sharded)
    masters = {client.get_node_from_key(s).name for s in predictions.shard_streams(sharded)}
    assert len(masters) == 3, "two shards share a master"
    assert [client.xlen(s) for s in predictions.shard_streams(sharded)] == [2, 2, 2]
    assert predictions.pending(sharded) == 7
    # Raised again before a drain: the three shards' entries wait in streams four shards do not
    # write to; the drain still empties them (every stream ever written is remembered).
    config["predictions"]["shards"] = 4
    (settings.project_dir / "maquette.yaml").write_text(yaml.safe_dump(config))
    four = load_settings(settings.project_dir)
    assert "test-hostile:reshard:2-1" not in predictions.shard_streams(four)
    assert client.xlen("test-hostile:reshard:2-1") == 2
    predictions.PredictionLog(four).append([_entry("four", T10)])
    assert predictions.pending(four) == 8
    assert predictions.drain(four).entries == 8
    expected = ["before", "four", *(f"after-{i}" for i in range(6))]
    assert sorted(_ids_on_disk(four)) == sorted(expected)
    assert predictions.pending(four) == 0


def test_a_sharded_log_refuses_a_hash_tagged_stream_name(tmp_path: Path) -> None:
    folder = make_project(tmp_path, "redis://h:1/0", predictions={"stream": "{preds}", "shards": 2})
    with pytest.raises(ConfigError, match=r"hash tag.*predictions\.shards"):
        load_settings(folder)


def test_drain_while_another_holds_the_lock_past_the_wait_moves_nothing_and_says_why(
    tmp_path: Path, running_redis: str
) -> None:
    settings = _project(tmp_path / "p", _db15(running_redis), drain_lock_wait_s=0.2)
    predictions.PredictionLog(settings).append([_entry("a", T10)])
    path = predictions.drain_lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = predictions.drain(settings)
    assert result.entries == 0 and result.busy and "another drain" in result.busy
    assert predictions.drain(settings).entries == 1  # the lock released, the entry moves


def test_drain_batches_by_bytes_so_large_entries_make_smaller_files(
    tmp_path: Path, running_redis: str
) -> None:
    settings = _project(
        tmp_path / "p", _db15(running_redis), drain_batch=1000, drain_max_bytes=40_000
    )
    big = "x" * 10_000  # four of these are drain_max_bytes
    entries = [_entry(f"b-{i}", T10, request={"note": big}) for i in range(40)]
    predictions.PredictionLog(settings).append(entries)
    result = predictions.drain(settings)
    assert result.entries == 40
    rows = [pq.read_metadata(f).num_rows for f in result.files]
    assert len(rows) >= 8 and max(rows) <= 5, rows
    assert sorted(_ids_on_disk(settings)) == sorted(e["prediction_id"] for e in entries)


def test_entries_with_and_without_received_at_drain_and_read_back_together(
    tmp_path: Path, running_redis: str
) -> None:
    settings = _project(tmp_path / "p", _db15(running_redis))
    log = predictions.PredictionLog(settings)
    log.append([_entry("old", T10)])  # logged before the service added received_at
    predictions.drain(settings)
    received = datetime(2024, 6, 1, 10, 0, 3, tzinfo=UTC)
    log.append([_entry("new", T10, received_at=received.isoformat())])
    predictions.drain(settings)
    table = predictions.read_predictions(settings)
    found = dict(
        zip(table["prediction_id"].to_pylist(), table["received_at"].to_pylist(), strict=True)
    )
    assert found == {"old": None, "new": received}


def test_an_entry_that_is_not_json_is_kept_and_later_entries_still_drain(
    tmp_path: Path, running_redis: str
) -> None:
    settings = _project(tmp_path / "p", _db15(running_redis))
    client = redis.Redis.from_url(_db15(running_redis))
    client.xadd(settings.predictions.stream, {predictions.FIELD: b"{not json"})
    predictions.PredictionLog(settings).append([_entry("after", T10, request_time="someday")])
    assert predictions.drain(settings).entries == 2
    table = predictions.read_predictions(settings)
    assert sorted(table["model"].to_pylist()) == sorted(["rating", predictions.UNREADABLE])
    assert predictions.pending(settings) == 0


def test_a_requests_entry_drains_into_one_row_per_prediction_and_a_torn_one_is_kept(
    tmp_path: Path, running_redis: str
) -> None:
    """The service logs one entry per request, its predictions as columns: the drain expands
    it, and an entry whose columns disagree in length is kept whole as unreadable."""
    settings = _project(tmp_path / "p", _db15(running_redis))
    request = _entry(
        ["r-1", "r-2", "r-3"],
        T10,
        partition=["__all__", "EWR", "__all__"],
        prediction=[1.0, 2.0, 3.0],
        decision=None,
        missing=[[], ["dep_delay"], []],
        stale=None,
        entity={"user_id": [7, 8, 9]},
        request={"hour": [5, 6, 7]},
        features={"dep_delay": [1.5, None, 3.5]},
    )
    torn = _entry(["t-1", "t-2"], T10, prediction=[1.0])
    predictions.PredictionLog(settings).append([request, torn])
    assert predictions.drain(settings).entries == 4
    table = predictions.read_predictions(settings).sort_by("prediction_id")
    rows = {r["prediction_id"]: r for r in table.to_pylist()}
    assert {"r-1", "r-2", "r-3"} < rows.keys() and len(rows) == 4
    assert [rows[f"r-{i}"]["prediction"] for i in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert rows["r-2"]["partition"] == "EWR" and rows["r-2"]["missing"] == ["dep_delay"]
    assert json.loads(rows["r-3"]["entity"]) == {"user_id": 9}
    assert json.loads(rows["r-3"]["request"]) == {"hour": 7}
    assert json.loads(rows["r-1"]["features"]) == {"dep_delay": 1.5}
    assert rows["r-1"]["model"] == "rating" and rows["r-1"]["version"] == "v1"
    assert predictions.UNREADABLE in table["model"].to_pylist()
    assert predictions.pending(settings) == 0


PASSWORD = "s3cret-pw"


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    """A redis-server of this test's own, with a password (its memory limit changes)."""
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    cmd = server_command(
        redis_server_binary(), port, "127.0.0.1", data, daemonize=False, password=PASSWORD
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", 10, data / "redis.log")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_full_redis_refuses_the_log_write_as_store_unavailable_without_the_password(
    tmp_path: Path, own_redis: int
) -> None:
    admin = redis.Redis(port=own_redis, password=PASSWORD)
    admin.set("ballast", b"x" * 2_000_000)
    admin.config_set("maxmemory", str(admin.info("memory")["used_memory"] + 10_000))
    admin.config_set("maxmemory-policy", "noeviction")
    settings = _project(tmp_path / "p", f"redis://:{PASSWORD}@127.0.0.1:{own_redis}/0")
    big = "y" * 200_000
    with pytest.raises(StoreUnavailable) as caught:
        predictions.PredictionLog(settings).append(
            [_entry(f"o-{i}", T10, request={"n": big}) for i in range(5)]
        )
    text = str(caught.value)
    assert "refused the prediction log write" in text and "maxmemory" in text
    assert "drain the prediction log" in caught.value.remedy
    assert PASSWORD not in text


# ---------------------------------------------------------------- label files


def _logged(settings: Settings, times: list[tuple[str, datetime | str]]) -> None:
    predictions.PredictionLog(settings).append([_entry(pid, when) for pid, when in times])
    predictions.drain(settings)


def test_a_label_file_holding_na_is_refused_with_its_rows_and_later_files_still_join(
    tmp_path: Path, running_redis: str
) -> None:
    settings = _project(tmp_path / "p", _db15(running_redis))
    _logged(settings, [("a", T10)])
    bad = tmp_path / "it's labels.csv"  # a quote and a space in the name
    values = ["4.0", "N/A", "3", "n/a", *(["oops"] * 11)]
    lines = [f"1,{(T10 + timedelta(hours=i)).isoformat()},{v}" for i, v in enumerate(values)]
    bad.write_text("user_id,rated_at,label\n" + "\n".join(lines) + "\n")
    with pytest.raises(InvalidEntityFrame) as caught:
        labels.ingest_labels(settings, "rating", bad)
    message = caught.value.message
    assert "13 row(s)" in message and "row(s) 2, 4, 5, 6, 7, 8, 9, 10, 11, 12 and 3 more" in message
    assert not list(labels.label_files_dir(settings, "rating").glob("*"))  # nothing kept
    good = tmp_path / "it's fixed labels.csv"
    good.write_text(f"user_id,rated_at,label\n1,{T10.isoformat()},4.5\n")
    assert labels.ingest_labels(settings, "rating", good).rows == 1
    scored = labels.join_labels(settings, "rating")
    assert scored["label"].to_pylist() == [4.5]


# ---------------------------------------------------------------- request times


def test_request_times_in_year_1_and_9999_are_left_out_of_monitoring_and_counted(
    tmp_path: Path, running_redis: str
) -> None:
    settings = _project(tmp_path / "p", _db15(running_redis))
    _logged(
        settings,
        [
            ("ok", T10),
            ("ancient", "0001-01-01T00:00:00+00:00"),
            ("future", "9999-12-31T00:00:00+00:00"),
            ("spread", "1700-01-01T00:00:00+00:00"),
        ],
    )
    good = tmp_path / "labels.csv"
    good.write_text(f"user_id,rated_at,label\n1,{T10.isoformat()},4.5\n")
    labels.ingest_labels(settings, "rating", good)
    scored = labels.join_labels(settings, "rating")
    assert scored["prediction_id"].to_pylist() == ["ok"]
    assert labels.ignored_requests(settings, "rating") == 3
    # What drift and skew do with the scored rows: a year-1 row made this raise every pass.
    frame = scored.to_pandas()
    assert len(windows_of(frame, parse_window("weekly"), datetime.now(UTC))) == 1


# ---------------------------------------------------------------- skew keys


def test_skew_types_logged_keys_as_declared_numbers_as_strings_and_back() -> None:
    logged = pd.DataFrame.from_records(
        [{"origin": 7, "flight_id": "12"}, {"origin": "EWR", "flight_id": 13}]
    )
    typed = typed_entities(logged, {"origin": String, "flight_id": Int64})
    assert typed["origin"].tolist() == ["7", "EWR"]
    assert typed["flight_id"].tolist() == [12, 13]


# ---------------------------------------------------------------- the speed layer


@pytest.fixture(scope="module")
def stream_project(tmp_path_factory: pytest.TempPathFactory, running_redis: str) -> Settings:
    folder = make_project(
        tmp_path_factory.mktemp("hostile-stream"),
        _db15(running_redis),
        feast={"project": "hostile_stream"},
        stream={"events_source": None, "backfill_before": None, "allowed_lateness_s": 600},
    )
    settings = load_settings(folder)
    apply_own_repo(settings)
    return settings


def _fresh(settings: Settings, name: str) -> Settings:
    copy = settings.model_copy(deep=True)
    copy.stream.stream = f"hostile:{name}:{uuid.uuid4().hex}"
    copy.stream.dead_letter = f"{copy.stream.stream}:dead"
    operations.reset(copy)
    return copy


def _departure(when: str, delay: float | str, origin: str) -> dict[str, Any]:
    return {"origin": origin, "carrier": "H1", "departed_at": when, "dep_delay": delay}


def _online_stamp(settings: Settings, origin: str) -> float | None:
    """Seconds since the epoch of the online row of `origin` (origin_last_hour), if any."""
    (target,) = [
        t
        for t in resolve_targets(FeatureLayer(settings), stream_definition(settings))
        if t.agg.key == "origin"
    ]
    key = wire.entity_key_bytes({"origin": origin}, {"origin": String}, settings.feast.project)
    raw = redis.Redis.from_url(redis_url(settings)).hget(key, wire.ts_field(target.view))
    return wire.decode_timestamp_seconds(raw)


def test_an_event_from_the_year_9999_is_dead_lettered_and_later_events_are_not_late(
    stream_project: Settings,
) -> None:
    settings = _fresh(stream_project, "ahead")
    publish(settings, [_departure("9999-12-31T00:00:00+00:00", 5, "Y9K")])
    publish(settings, [_departure("2013-12-01T10:00:00+00:00", 7, "Y9K")])
    result = StreamProcessor(settings).run(until_idle_s=0.2)
    assert (result.events, result.late, result.malformed) == (1, 0, 1)
    (letter,) = operations.dead_letters(settings)
    assert "ahead of the processor's clock" in letter["reason"]
    assert "max_event_ahead" in letter["reason"]


def test_values_beyond_2_to_the_53_are_dead_lettered_not_summed_into_an_overflow(
    stream_project: Settings,
) -> None:
    settings = _fresh(stream_project, "huge")
    publish(
        settings,
        [
            _departure("2013-12-01T10:00:00+00:00", "1e308", "BIG"),
            _departure("2013-12-01T10:01:00+00:00", "1e308", "BIG"),
            _departure("2013-12-01T10:02:00+00:00", 3, "BIG"),
        ],
    )
    result = StreamProcessor(settings).run(until_idle_s=0.2)
    assert (result.events, result.malformed) == (1, 2)
    assert all("beyond" in d["reason"] for d in operations.dead_letters(settings))


def test_a_state_poisoned_by_a_year_9999_event_is_repaired_at_start(
    stream_project: Settings,
) -> None:
    settings = _fresh(stream_project, "poisoned")
    # What the processor did before events ahead of the clock were refused: a clock in 9999
    # lets the event in, its watermark and online row are committed.
    far = datetime(9999, 12, 31, 23, tzinfo=UTC)
    publish(settings, [_departure("9999-12-31T00:00:00+00:00", 5, "PSN")])
    StreamProcessor(settings, clock=lambda: far).run(until_idle_s=0.2)
    client = redis.Redis.from_url(redis_url(settings))
    poisoned = int(client.hget(state_key(settings), MAX_TIME_FIELD) or 0)
    assert poisoned > 250_000_000_000 * 1_000_000
    assert (_online_stamp(settings, "PSN") or 0) > 250_000_000_000

    # Restarted on the wall clock: the next real event counts and its row is served.
    publish(settings, [_departure("2013-12-01T10:00:00+00:00", 7, "PSN")])
    result = StreamProcessor(settings).run(until_idle_s=0.2)
    assert (result.events, result.late) == (1, 0)
    repaired = int(client.hget(state_key(settings), MAX_TIME_FIELD) or 0)
    assert repaired < poisoned
    stamp = _online_stamp(settings, "PSN")
    assert stamp is not None and stamp < time.time()


def test_replay_clock_lets_past_events_in_and_refuses_those_ahead_of_it(
    stream_project: Settings,
) -> None:
    settings = _fresh(stream_project, "replay")
    clock = datetime(2013, 12, 1, 12, tzinfo=UTC)  # a replay of 2013 at noon
    publish(
        settings,
        [
            _departure("2013-12-01T11:59:00+00:00", 1, "RPL"),
            _departure("2013-12-01T12:30:00+00:00", 2, "RPL"),  # within 1h ahead: accepted
            _departure("2013-12-02T12:00:00+00:00", 3, "RPL"),  # a day ahead of the replay
        ],
    )
    result = StreamProcessor(settings, clock=lambda: clock).run(until_idle_s=0.2)
    assert (result.events, result.malformed) == (2, 1)


# ---------------------------------------------------------------- the event stream stays bounded


def test_the_processor_trims_what_it_acknowledged_and_keeps_what_a_group_still_needs(
    stream_project: Settings,
) -> None:
    settings = _fresh(stream_project, "trim")
    stream = settings.stream.stream
    client = redis.Redis.from_url(redis_url(settings))
    publish(settings, [_departure(f"2013-12-01T10:0{i}:00+00:00", i, "TRM") for i in range(5)])
    # A second reader of the stream has taken two entries and acknowledged none.
    client.xgroup_create(stream, "other", id="0")
    ((_, held),) = client.xreadgroup("other", "c", {stream: ">"}, count=2)
    StreamProcessor(settings).run(until_idle_s=0.2)
    # Everything after the other group's oldest pending entry stays; nothing before it existed.
    assert client.xlen(stream) == 5
    client.xack(stream, "other", *[entry_id for entry_id, _ in held])
    assert trim_acknowledged(client, stream) == 2  # the other group still has 3 undelivered
    client.xgroup_destroy(stream, "other")
    publish(settings, [_departure("2013-12-01T11:00:00+00:00", 1, "TRM")])
    result = StreamProcessor(settings).run(until_idle_s=0.2)
    assert result.events == 1 and client.xlen(stream) == 0  # acknowledged, then trimmed
