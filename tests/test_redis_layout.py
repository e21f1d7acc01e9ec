"""The bulk encoders must produce exactly the bytes Feast writes."""

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from feast.types import Bool, Float32, Float64, Int32, Int64, String
from google.protobuf.timestamp_pb2 import Timestamp

from maquette.config import load_settings
from maquette.features import redis_layout as wire
from maquette.features.online import HashReads
from tests.conftest import make_project

VALUES = [
    (Float64, [1.5, None, float("nan"), 0.0, -2.25, 1e300]),
    (Float32, [1.5, None, 0.0, -3.0]),
    (Int64, [0, 1, 127, 128, 300, -1, None, 2**40, -(2**63)]),
    (Int32, [0, -5, 7, None, 2**31 - 1]),
    (String, ["ab", "", None, "é" * 200, "x" * 130]),
    (Bool, [True, False, None]),
]


@pytest.mark.parametrize(("dtype", "values"), VALUES, ids=lambda v: str(v)[:20])
def test_encoded_values_equal_feast_protobufs(dtype, values) -> None:  # type: ignore[no-untyped-def]
    ours = wire.encode_values(pa.array(values), dtype).to_pylist()
    feast = [
        p.SerializeToString() for p in python_values_to_proto_values(values, dtype.to_value_type())
    ]
    assert ours == feast


def test_encoded_values_decode_back() -> None:
    encoded = wire.encode_values(pa.array([2.5, None, 7.0]), Float64).to_pylist()
    assert [wire.decode_value(b) for b in encoded] == [2.5, None, 7.0]
    assert wire.decode_value(wire.encode_values(pa.array(["hi"]), String)[0].as_py()) == "hi"
    assert wire.decode_value(None) is None


def test_encoded_timestamps_equal_protobuf_timestamps() -> None:
    times = [
        datetime(2013, 1, 1, 5, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2013, 5, 1, 1, 2, 3, 456789, tzinfo=UTC),
    ]
    proto, seconds, _ = wire.encode_timestamps(pa.array(times))
    expected = []
    for t in times:
        ts = Timestamp()
        ts.FromDatetime(t)
        expected.append(ts.SerializeToString())
    assert proto.to_pylist() == expected
    assert list(seconds) == [int(t.timestamp()) for t in times]
    assert wire.decode_timestamp_seconds(expected[2]) == pytest.approx(times[2].timestamp())


def _feast_key(keys: dict[str, Value]) -> bytes:
    return serialize_entity_key(EntityKey(join_keys=list(keys), entity_values=list(keys.values())))


def test_entity_keys_equal_feast_serialization_for_strings_ints_and_compound_keys() -> None:
    origins, flights = ["JFK", "EWR", "LGA"], [1, -2, 2**40]
    ours = wire.encode_entity_keys(
        {"origin": pa.array(origins), "flight": pa.array(flights)},
        {"origin": String, "flight": Int64},
        "proj",
    ).to_pylist()
    feast = [
        _feast_key({"origin": Value(string_val=o), "flight": Value(int64_val=f)}) + b"proj"
        for o, f in zip(origins, flights, strict=True)
    ]
    assert ours == feast
    single = wire.entity_key_bytes(
        {"flight": 1, "origin": "JFK"}, {"origin": String, "flight": Int64}, "proj"
    )
    assert single == feast[0]


def test_field_names_are_feast_murmur_hashes() -> None:
    assert wire.field_hash("weather_hourly", "temp") == _mmh3("weather_hourly:temp")


def test_newer_than_stored_follows_feasts_rule() -> None:
    _, seconds, nanos = wire.encode_timestamps(pa.array([datetime(2013, 1, 2, tzinfo=UTC)] * 3))
    older, same, newer = (
        wire.encode_timestamps(pa.array([d]))[0][0].as_py()
        for d in (
            datetime(2013, 1, 1, tzinfo=UTC),
            datetime(2013, 1, 2, tzinfo=UTC),
            datetime(2013, 1, 3, tzinfo=UTC),
        )
    )
    assert list(wire.newer_than_stored([older, same, newer], seconds, nanos)) == [
        True,
        False,
        False,
    ]
    assert list(wire.newer_than_stored([None], seconds[:1], nanos[:1])) == [True]


def test_a_read_interrupted_before_its_replies_leaves_none_for_the_next_read(
    tmp_path: Path, running_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or any exception) between sending HMGETs and reading their replies drops the
    connection: the next read must get its own replies, not the interrupted read's."""
    settings = load_settings(make_project(tmp_path / "p", running_redis))
    client = redis.Redis.from_url(running_redis)
    first, second = f"maquette:test:{uuid.uuid4().hex}", f"maquette:test:{uuid.uuid4().hex}"
    client.hset(first, "f", b"first")
    client.hset(second, "f", b"second")
    reads = HashReads(settings, client)
    assert reads.raw  # the raw-socket path is the one under test
    replies = wire.RespWriter.replies

    def interrupted(self: wire.RespWriter, count: int) -> list[object]:
        raise KeyboardInterrupt

    try:
        # Connected first (AUTH and SELECT read their replies), then interrupted.
        assert reads.hmget([wire.RespWriter.pack(["HMGET", first, "f"])]) == [[b"first"]]
        monkeypatch.setattr(wire.RespWriter, "replies", interrupted)
        with pytest.raises(KeyboardInterrupt):
            reads.hmget([wire.RespWriter.pack(["HMGET", first, "f"])])
        monkeypatch.setattr(wire.RespWriter, "replies", replies)
        assert reads.hmget([wire.RespWriter.pack(["HMGET", second, "f"])]) == [[b"second"]]
    finally:
        client.delete(first, second)
