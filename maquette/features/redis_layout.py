"""Feast's Redis online-store layout, written in bulk and read back fast.

The layout is Feast's own (`feast.infra.online_stores.redis`, entity key serialization v3), so
`FeatureStore.get_online_features` reads what Maquette writes and the other way round:

    key          serialize_entity_key(EntityKey) + project      (one hash per entity key;
                 entity-less views share Feast's dummy key, __dummy_id = "")
    mmh3(f"{view}:{feature}")  4 bytes  -> ValueProto bytes      (b"" for null or NaN)
    "_ts:{view}"                        -> protobuf Timestamp    (event time of the row)

Stock Feast builds one protobuf object per value and one redis-py call per row (~10k rows/s).
Here whole columns are encoded with numpy/Arrow into one RESP buffer per batch and written down
a raw socket. Feast's write rule is kept: read the stored `_ts:{view}` of every key first
(pipelined HGET), then write only the rows that are newer.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast.feature_view import DUMMY_ENTITY_ID, DUMMY_ENTITY_VAL
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import (
    Bool,
    FeastType,
    Float32,
    Float64,
    Int32,
    Int64,
    String,
)

from maquette.errors import StoreUnavailable

# ValueProto field tags (field number << 3 | wire type).
_TAG_STRING, _TAG_INT32, _TAG_INT64 = 0x12, 0x18, 0x20
_TAG_DOUBLE, _TAG_FLOAT, _TAG_BOOL = 0x29, 0x35, 0x38
# Feast's ValueType enum values used in entity keys.
_VT_STRING, _VT_INT32, _VT_INT64 = 2, 3, 4


def field_hash(view: str, feature: str) -> bytes:
    """Feast's hash field name for a feature: murmur3_32 of "view:feature", little endian."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def ts_field(view: str) -> bytes:
    return f"_ts:{view}".encode()


# ---------------------------------------------------------------- column encoders (vectorized)


def _rows_to_binary(matrix: np.ndarray, lengths: np.ndarray) -> pa.BinaryArray:
    """A binary array holding the first `lengths[i]` bytes of each row of a uint8 matrix."""
    keep = np.arange(matrix.shape[1]) < lengths[:, None]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.ascontiguousarray(matrix[keep])
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    ).cast(pa.binary())


def _varints(values: np.ndarray, tag: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varints of int64 values (negatives as 10-byte two's complement), optionally tagged."""
    u = values.astype(np.int64).view(np.uint64)
    groups = np.stack([(u >> np.uint64(7 * i)) & np.uint64(0x7F) for i in range(10)], axis=1)
    nonzero = np.stack([(u >> np.uint64(7 * i)) != 0 for i in range(1, 10)], axis=1)
    nbytes = 1 + nonzero.sum(axis=1)
    cont = (np.arange(10) < (nbytes - 1)[:, None]).astype(np.uint64) << np.uint64(7)
    body = (groups | cont).astype(np.uint8)
    if tag is None:
        return body, nbytes
    return np.hstack([np.full((len(u), 1), tag, np.uint8), body]), nbytes + 1


def _fixed(values: np.ndarray, tag: int, dtype: str) -> np.ndarray:
    raw = np.ascontiguousarray(values.astype(dtype)).view(np.uint8).reshape(len(values), -1)
    return np.hstack([np.full((len(values), 1), tag, np.uint8), raw])


def encode_values(column: pa.Array, dtype: FeastType) -> pa.BinaryArray:
    """ValueProto bytes for every value of a column, b"" where null (as Feast writes nulls)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(column)
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if dtype in (Float64, Float32):
        values = column.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        valid &= ~np.isnan(values)  # Feast stores NaN as an empty value
        matrix = (
            _fixed(values, _TAG_DOUBLE, "<f8")
            if dtype == Float64
            else _fixed(values, _TAG_FLOAT, "<f4")
        )
        return _rows_to_binary(matrix, np.where(valid, matrix.shape[1], 0))
    if dtype in (Int64, Int32):
        values = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        matrix, lengths = _varints(values, _TAG_INT64 if dtype == Int64 else _TAG_INT32)
        return _rows_to_binary(matrix, np.where(valid, lengths, 0))
    if dtype == Bool:
        values = column.cast(pa.bool_()).fill_null(False).to_numpy(zero_copy_only=False)
        matrix = np.stack([np.full(n, _TAG_BOOL, np.uint8), values.astype(np.uint8)], axis=1)
        return _rows_to_binary(matrix, np.where(valid, 2, 0))
    if dtype == String:
        text = column.cast(pa.string()).fill_null("")
        lengths = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
        header, hlen = _varints(lengths, _TAG_STRING)
        encoded = pc.binary_join_element_wise(
            _rows_to_binary(header, hlen), text.cast(pa.binary()), b""
        )
        return pc.if_else(pa.array(valid), encoded, pa.scalar(b"", pa.binary()))
    return _encode_values_with_feast(column, dtype)


def _encode_values_with_feast(column: pa.Array, dtype: FeastType) -> pa.BinaryArray:
    """Slow but general: Feast's own conversion, for types without a vectorized encoder."""
    from feast.type_map import python_values_to_proto_values

    value_type = dtype.to_value_type()
    protos = python_values_to_proto_values(column.to_pylist(), value_type)
    return pa.array([p.SerializeToString() for p in protos], pa.binary())


def _le_u32(values: np.ndarray) -> pa.BinaryArray:
    raw = np.ascontiguousarray(values.astype("<u4")).view(np.uint8).reshape(len(values), 4)
    return _rows_to_binary(raw, np.full(len(values), 4))


def encode_entity_keys(
    columns: dict[str, pa.Array], types: dict[str, FeastType], project: str, rows: int = 0
) -> pa.BinaryArray:
    """Redis keys (serialize_entity_key v3 + project) for rows of join-key columns; without
    join keys (an entity-less view), Feast's dummy key for each of `rows` rows."""
    if not columns:
        columns = {DUMMY_ENTITY_ID: pa.array([DUMMY_ENTITY_VAL] * rows, pa.string())}
        types = {DUMMY_ENTITY_ID: String}
    names = sorted(columns)
    header = struct.pack("<I", len(names)) + b"".join(
        struct.pack("<II", _VT_STRING, len(k.encode())) + k.encode() for k in names
    )
    parts: list[Any] = [header]
    for name in names:
        col, dtype = columns[name], types[name]
        if dtype == String:
            text = col.cast(pa.string())
            lengths = pc.binary_length(text).to_numpy(zero_copy_only=False)
            parts += [struct.pack("<I", _VT_STRING), _le_u32(lengths), text.cast(pa.binary())]
        elif dtype in (Int64, Int32):
            values = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
            fmt, vt = ("<i8", _VT_INT64) if dtype == Int64 else ("<i4", _VT_INT32)
            raw = np.ascontiguousarray(values.astype(fmt)).view(np.uint8).reshape(len(values), -1)
            parts += [
                struct.pack("<II", vt, raw.shape[1]),
                _rows_to_binary(raw, np.full(len(values), raw.shape[1])),
            ]
        else:
            raise TypeError(f"entity key {name!r} of type {dtype} is not supported (string or int)")
    parts.append(project.encode())
    return pc.binary_join_element_wise(*parts, b"")


def entity_key_bytes(values: dict[str, Any], types: dict[str, FeastType], project: str) -> bytes:
    """One Redis key, for the online read path (same layout as encode_entity_keys)."""
    if not values:  # an entity-less view: Feast's dummy key
        values, types = {DUMMY_ENTITY_ID: DUMMY_ENTITY_VAL}, {DUMMY_ENTITY_ID: String}
    names = sorted(values)
    out = [struct.pack("<I", len(names))]
    for name in names:
        encoded = name.encode()
        out.append(struct.pack("<II", _VT_STRING, len(encoded)) + encoded)
    for name in names:
        value, dtype = values[name], types[name]
        if dtype == String:
            encoded = str(value).encode()
            out.append(struct.pack("<II", _VT_STRING, len(encoded)) + encoded)
        elif dtype == Int64:
            out.append(struct.pack("<IIq", _VT_INT64, 8, int(value)))
        elif dtype == Int32:
            out.append(struct.pack("<IIi", _VT_INT32, 4, int(value)))
        else:
            raise TypeError(f"entity key {name!r} of type {dtype} is not supported (string or int)")
    out.append(project.encode())
    return b"".join(out)


def encode_timestamps(column: pa.Array) -> tuple[pa.BinaryArray, np.ndarray, np.ndarray]:
    """Protobuf Timestamp bytes of each value, plus its seconds and nanos."""
    micros = (
        column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    )
    seconds, rem = np.divmod(micros, 1_000_000)
    nanos = rem * 1000
    sec_m, sec_n = _varints(seconds, 0x08)
    nan_m, nan_n = _varints(nanos, 0x10)
    # proto3 leaves zero-valued fields out, exactly as Timestamp.SerializeToString does.
    proto = pc.binary_join_element_wise(
        _rows_to_binary(sec_m, np.where(seconds != 0, sec_n, 0)),
        _rows_to_binary(nan_m, np.where(nanos != 0, nan_n, 0)),
        b"",
    )
    return proto, seconds, nanos


# ---------------------------------------------------------------- RESP batch writer


def _bulk(column: pa.Array) -> list[Any]:
    """RESP bulk-string parts ($len CRLF data CRLF) of a binary/string column."""
    lengths = pc.cast(pc.binary_length(column), pa.string()).cast(pa.binary())
    return [b"$", lengths, b"\r\n", column.cast(pa.binary()), b"\r\n"]


def _const(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def hget_commands(keys: pa.Array, field: bytes) -> bytes:
    """Pipelined `HGET key field` for every key."""
    return concat(hget_command_array(keys, field))


def hget_command_array(keys: pa.Array, field: bytes) -> pa.BinaryArray:
    """One `HGET key field` command per key."""
    return pc.binary_join_element_wise(b"*3\r\n$4\r\nHGET\r\n", *_bulk(keys), _const(field), b"")


def hset_commands(
    keys: pa.Array,
    ts_name: bytes,
    ts_proto: pa.Array,
    fields: Sequence[bytes],
    values: Sequence[pa.Array],
) -> pa.BinaryArray:
    """One `HSET key _ts:view ts f1 v1 ...` command per row (join them with `concat`)."""
    parts: list[Any] = [
        b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * len(fields)),
        *_bulk(keys),
        _const(ts_name),
        *_bulk(ts_proto),
    ]
    for name, col in zip(fields, values, strict=True):
        parts += [_const(name), *_bulk(col)]
    return pc.binary_join_element_wise(*parts, b"")


def concat(array: pa.BinaryArray) -> bytes:
    """All values of a binary array back to back (one slice of its data buffer)."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)
    first, last = offsets[array.offset], offsets[array.offset + len(array)]
    return memoryview(array.buffers()[2])[first:last].tobytes()


def newer_than_stored(
    stored: Sequence[bytes | None], seconds: np.ndarray, nanos: np.ndarray
) -> np.ndarray:
    """Feast's rule: a row is written only when no timestamp is stored or it is strictly newer."""
    newer = np.ones(len(stored), dtype=bool)
    for i, raw in enumerate(stored):
        if raw is not None:
            prev_s, prev_n = _timestamp_parts(raw)
            newer[i] = (prev_s, prev_n) < (int(seconds[i]), int(nanos[i]))
    return newer


class ConnectionLost(StoreUnavailable):
    """The connection could not be made or the server closed it (a restart): worth one retry
    on a new connection, unlike a refused command."""


class RespWriter:
    """A raw pipelined connection: send a batch of commands, count their one-line replies."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        parsed = urlparse(url)
        self.address = (parsed.hostname or "localhost", parsed.port or 6379)
        try:
            self.sock = socket.create_connection(self.address, timeout=timeout_s)
        except TimeoutError:
            raise  # a stalled server: the caller does not retry it (the request's time budget)
        except OSError as exc:
            raise ConnectionLost(
                f"cannot connect to Redis at {self.address[0]}:{self.address[1]}: {exc}",
                "Start it with `maquette redis start`, or fix MAQUETTE_REDIS_URL.",
            ) from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._parser = hiredis.Reader()
        setup = []
        if parsed.password:
            user = [unquote(parsed.username)] if parsed.username else []
            setup.append(["AUTH", *user, unquote(parsed.password)])
        db = (parsed.path or "/0").lstrip("/") or "0"
        if db != "0":
            setup.append(["SELECT", db])
        try:
            for command in setup:
                self.send(self.pack(command))
                self.replies(1)
        except BaseException:
            self.sock.close()  # a refused AUTH or SELECT: no socket left for the collector
            raise

    @staticmethod
    def pack(args: Sequence[str | bytes]) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg.encode() if isinstance(arg, str) else arg
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        return b"".join(out)

    def send(self, commands: bytes) -> None:
        self.sock.sendall(commands)

    def replies(self, count: int) -> list[Any]:
        """Read `count` replies; an error reply raises StoreUnavailable with Redis's message."""
        out = self.raw_replies(count)
        if errors := [r for r in out if isinstance(r, hiredis.ReplyError)]:
            raise StoreUnavailable(
                f"Redis refused {len(errors)} commands: {errors[0]}",
                "Check the server's memory and configuration.",
            )
        return out

    def raw_replies(self, count: int) -> list[Any]:
        """Read `count` replies, error replies among them (`hiredis.ReplyError`)."""
        out: list[Any] = []
        while len(out) < count:
            reply = self._parser.gets()
            if reply is False:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionLost(
                        f"Redis at {self.address} closed the connection.",
                        "Check the server log; retry once it is back.",
                    )
                self._parser.feed(chunk)
                continue
            out.append(reply)
        return out

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- read path decoding


def decode_value(raw: bytes | None) -> Any:
    """Python value of ValueProto bytes (None for missing or null)."""
    if not raw:
        return None
    if raw[0] == _TAG_DOUBLE and len(raw) == 9:
        return struct.unpack_from("<d", raw, 1)[0]
    proto = ValueProto.FromString(raw)
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    value = getattr(proto, kind)
    return list(value.val) if kind.endswith("_list_val") else value


def decode_timestamp_seconds(raw: bytes | None) -> float | None:
    """Seconds since the epoch held in protobuf Timestamp bytes (None when missing)."""
    if raw is None:
        return None
    seconds, nanos = _timestamp_parts(raw)
    return seconds + nanos / 1e9


def _timestamp_parts(raw: bytes) -> tuple[int, int]:
    seconds = nanos = 0
    i = 0
    while i < len(raw):
        tag = raw[i]
        i += 1
        value = shift = 0
        while True:
            byte = raw[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if tag == 0x08:
            seconds = value - (1 << 64) if value >= 1 << 63 else value
        elif tag == 0x10:
            nanos = value
    return seconds, nanos
