"""Online reads: features for entity rows from Redis, with a status per value.

One pipelined HMGET per distinct entity key and key group answers a whole batch of requests.
Values older than their view's TTL are flagged OUTSIDE_MAX_AGE, which Feast's own online read
does not do; on-demand views are computed from the request fields and the stored features.

The read is column-wise, because a 100-row request paid Python per row and per value: the
HMGETs are packed as RESP bytes (a key's command is its key plus its group's fixed fields;
redis-py's pipeline spent ~10 us per command), each distinct key's reply is decoded once, values
through a memo of raw bytes (the same stored bytes recur across keys and requests), and rows get
their columns by index (`operator.itemgetter`), not by building a dict per row.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from itertools import repeat
from typing import Any, ClassVar, cast
from urllib.parse import urlparse

import redis
from feast.types import Int32, Int64, String

from maquette.config import Settings
from maquette.data.redis_server import redis_url, unreachable
from maquette.errors import InvalidEntityFrame, StoreUnavailable
from maquette.features import redis_layout as wire
from maquette.features.read_plan import KeyGroup, OnDemandRead, ReadPlan
from maquette.features.redis_cluster import ClusterDown, RoutedPipe, is_cluster, raw_pipe

# A value's status, in Feast's names.
PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE = "PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE"

# One request of a batch: entity rows, its read plan, and the time values are judged against.
PlannedRequest = tuple[Sequence[dict[str, Any]], ReadPlan, datetime | None]


@dataclass
class OnlineFeatures:
    """Features for a list of entity rows, with a status per value (Feast's status names).

    Held column-wise (`columns[name][row]`, `status[name][row]`); `values` and `statuses` give
    the same as one dict per row.
    """

    names: list[str]
    columns: dict[str, list[Any]]
    status: dict[str, list[str]]
    rows: int

    @cached_property
    def values(self) -> list[dict[str, Any]]:
        """One dict of feature values per row."""
        return [{n: self.columns[n][i] for n in self.names} for i in range(self.rows)]

    @cached_property
    def statuses(self) -> list[dict[str, str]]:
        """One dict of statuses per row."""
        return [{n: self.status[n][i] for n in self.names} for i in range(self.rows)]

    def to_dict(self) -> dict[str, list[Any]]:
        """Column-oriented like Feast's `OnlineResponse.to_dict()`."""
        return {n: list(self.columns[n]) for n in self.names}

    def missing(self, i: int) -> list[str]:
        """Names of row i's features that Redis does not hold."""
        return [n for n in self.names if self.status[n][i] == NOT_FOUND]

    def stale(self, i: int) -> list[str]:
        """Names of row i's features older than their view's TTL."""
        return [n for n in self.names if self.status[n][i] == OUTSIDE_MAX_AGE]


class _Memo(dict[Any, Any]):
    """Decoded values by their stored bytes, up to `limit` of them (then cleared): the same
    bytes recur across keys (a plane's seat count) and requests (the same entities again)."""

    def __init__(self, decode: Callable[[Any], Any], limit: int = 1 << 17) -> None:
        super().__init__({None: None, b"": decode(b"")})
        self.decode, self.limit = decode, limit

    def __missing__(self, raw: bytes) -> Any:
        value = self.decode(raw)
        if isinstance(value, list):  # mutable: each row gets its own copy
            return value
        if len(self) >= self.limit:
            self.clear()
            self[None] = None
        self[raw] = value
        return value


_VALUES = _Memo(wire.decode_value)
_SECONDS = _Memo(wire.decode_timestamp_seconds)


class HashReads:
    """Pipelined HMGETs of the online store; replies in command order.

    For a `redis://` URL the packed commands go down a socket of its own, its replies parsed
    by hiredis in one loop (redis-py's per-reply bookkeeping was a tenth of a 100-row
    request); any other URL (TLS, a unix socket) goes through redis-py's connection.
    """

    def __init__(self, settings: Settings, client: redis.Redis[bytes] | None) -> None:
        self.settings, self.client = settings, client
        # A cluster's masters each get the commands of their keys (`RoutedPipe`).
        cluster = is_cluster(settings)
        self.raw = cluster or urlparse(redis_url(settings)).scheme == "redis"
        self._conn: wire.RespWriter | RoutedPipe | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def hmget(self, commands: list[bytes]) -> list[list[bytes | None]]:
        if not commands:
            return []
        retryable = (redis.ConnectionError, OSError, wire.ConnectionLost)
        if self._pid != os.getpid():
            # A forked child (multiprocessing): the socket and lock are the parent's; reading
            # from that socket would take the parent's replies. Start afresh, leave it open.
            self._conn, self._lock, self._pid = None, threading.Lock(), os.getpid()
        with self._lock:
            try:
                return self._round_trip(commands)
            except (TimeoutError, redis.TimeoutError) as exc:  # a stalled server: no retry
                self._close()
                raise unreachable(self.settings, exc) from exc
            except retryable:
                # A connection the server closed (a restart) fails on first use: one retry on a
                # fresh one (HMGET is a read, so sending it again changes nothing).
                self._close()
                try:
                    return self._round_trip(commands)
                except retryable as exc:
                    self._close()
                    raise unreachable(self.settings, exc) from exc

    def _round_trip(self, commands: list[bytes]) -> list[list[bytes | None]]:
        if not self.raw:
            return self._through_redis_py(commands)
        if self._conn is None:
            timeout_s = min(READ_TIMEOUT_S, 0.6 * self.settings.serving.timeout_s)
            self._conn = raw_pipe(self.settings, timeout_s=timeout_s, remember=True)
        try:
            if isinstance(self._conn, RoutedPipe):  # a cluster: no need to join, then cut
                return self._conn.round_trip(commands)
            self._conn.send(b"".join(commands))
            return self._conn.replies(len(commands))
        except (wire.ConnectionLost, ClusterDown):
            raise
        except StoreUnavailable as exc:  # error replies: all were read, the connection is fine
            raise StoreUnavailable(
                f"Redis refused online reads: {exc.message}", _REFUSED_REMEDY
            ) from exc
        except BaseException:
            # Anything else (Ctrl-C in recv, a protocol error) may leave replies unread: the
            # next call would take them for its own, so the connection goes.
            self._close()
            raise

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None

    def _through_redis_py(self, commands: list[bytes]) -> list[list[bytes | None]]:
        assert self.client is not None  # only a single Redis's non-redis:// URL comes here
        pool = self.client.connection_pool
        conn = pool.get_connection()
        replies: list[Any] = []
        errors: list[redis.ResponseError] = []
        try:
            conn.send_packed_command([b"".join(commands)], check_health=False)
            for _ in commands:
                try:
                    replies.append(conn.read_response(disable_decoding=True))
                except redis.ResponseError as exc:  # its reply is read: the rest follow
                    errors.append(exc)
        except BaseException:
            conn.disconnect()  # half-read replies must not reach the next caller
            raise
        finally:
            pool.release(conn)
        if errors:
            raise StoreUnavailable(
                f"Redis refused {len(errors)} of {len(commands)} online reads: {errors[0]}",
                _REFUSED_REMEDY,
            )
        return replies


READ_TIMEOUT_S = 5.0
_REFUSED_REMEDY = (
    "Check that the online store's keys are Feast's hashes (nothing else writes under this "
    "project's keys) and the server's log."
)


def read_online(
    settings: Settings, reads: HashReads, requests: Sequence[PlannedRequest]
) -> list[OnlineFeatures | InvalidEntityFrame]:
    """Each request's features in one Redis round trip; a request lacking a join key (or with
    values no key or on-demand view accepts) gets its error, the others answer."""
    keys = _Keys(settings.feast.project)
    queued: list[list[list[int]] | InvalidEntityFrame] = []
    for rows, plan, _ in requests:
        try:
            queued.append(keys.queue(plan, rows))
        except InvalidEntityFrame as exc:
            queued.append(exc)
    replies = reads.hmget(keys.commands)
    return [
        positions
        if isinstance(positions, InvalidEntityFrame)
        else _answer(plan, rows, as_of, positions, replies)
        for positions, (rows, plan, as_of) in zip(queued, requests, strict=True)
    ]


def _answer(
    plan: ReadPlan,
    rows: Sequence[dict[str, Any]],
    as_of: datetime | None,
    positions: list[list[int]],
    replies: list[list[bytes | None]],
) -> OnlineFeatures | InvalidEntityFrame:
    now = (as_of or datetime.now(UTC)).timestamp()
    columns: dict[str, list[Any]] = {}
    status: dict[str, list[str]] = {}
    try:
        for group, where in zip(plan.groups, positions, strict=True):
            _decode_group(group, where, replies, now, columns, status)
        for odfv in plan.odfvs:
            _apply_odfv(odfv, rows, columns, status)
    except InvalidEntityFrame as exc:
        return exc
    except Exception as exc:  # e.g. an on-demand view's function on a year-1 time
        return InvalidEntityFrame(
            f"the request's values could not be turned into features: {type(exc).__name__}: {exc}",
            "Check the types and ranges of the request fields.",
        )
    return OnlineFeatures(list(plan.names), columns, status, len(rows))


def _decode_group(
    group: KeyGroup,
    where: list[int],
    replies: list[list[bytes | None]],
    now: float,
    columns: dict[str, list[Any]],
    status: dict[str, list[str]],
) -> None:
    """The group's columns for the rows at reply positions `where`: each distinct reply is
    decoded once, then every row takes its key's values by index."""
    if not where:  # no rows
        for view in group.views:
            for name in view.features:
                columns[name], status[name] = [], []
        return
    local = {pos: k for k, pos in enumerate(dict.fromkeys(where))}
    by_row = [local[pos] for pos in where]
    # Per hash field, the raw values of the distinct keys (a transpose of their replies).
    raw_columns = list(zip(*(replies[pos] for pos in local), strict=True))
    pick = _picker(by_row)
    at = 0
    for view in group.views:
        written = [_SECONDS[raw] for raw in raw_columns[at + len(view.features)]]
        ttl = view.ttl_s
        key_status = [
            NOT_FOUND
            if seconds is None
            else (OUTSIDE_MAX_AGE if ttl is not None and seconds + ttl < now else PRESENT)
            for seconds in written
        ]
        unwritten = list(map(operator.is_, written, repeat(None)))
        for j, name in enumerate(view.features):
            raws = raw_columns[at + j]
            columns[name] = pick(list(map(_VALUES.__getitem__, raws)))
            # Usually a feature is unset exactly on the keys the view has no row for.
            if None in raws and list(map(operator.is_, raws, repeat(None))) != unwritten:
                status[name] = pick(
                    [
                        NOT_FOUND if raw is None else s
                        for raw, s in zip(raws, key_status, strict=True)
                    ]
                )
            else:
                status[name] = pick(key_status)
        at += len(view.features) + 1


def _picker(by_row: list[int]) -> Callable[[list[Any]], list[Any]]:
    """Row values from the distinct keys' values, in C (itemgetter) rather than a loop."""
    if not by_row:
        return lambda values: []
    if len(by_row) == 1:
        only = by_row[0]
        return lambda values: [values[only]]
    get = operator.itemgetter(*by_row)
    return lambda values: list(get(values))


class _Keys:
    """HMGETs to send: one per distinct Redis key and key group, however many rows (and batched
    requests) share it: 100 rows with the same entity read its hash once.

    Rows are matched on the encoded key, not the raw values (1, 1.0 and True are equal in
    Python but are different String keys); each key's whole HMGET (RESP bytes) is memoized by
    value and type, so a row seen before costs two dict lookups, done in C for a whole batch.
    """

    # HMGET commands by (fields, join keys, their types, project), then by values and types.
    _encoded: ClassVar[dict[Any, dict[Any, bytes]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, project: str) -> None:
        self.project = project
        self.commands: list[bytes] = []
        self.position: dict[bytes, int] = {}  # by HMGET command (its fields included)

    def queue(self, plan: ReadPlan, rows: Sequence[dict[str, Any]]) -> list[list[int]]:
        """Per key group, the reply position of each row (InvalidEntityFrame for a row that
        lacks a join key or holds a value no key accepts)."""
        out = []
        for group in plan.groups:
            fields = group.fields
            # The join keys and their types are in the memo's key: after a `feast apply` that
            # renames or retypes a key, a long-lived process encodes rows afresh.
            types = tuple(str(group.key_types.get(k)) for k in group.join_keys)
            encoded = self._encoded.setdefault((fields, group.join_keys, types, self.project), {})
            positions = self.position
            plain = _plain_classes(group)
            names = group.join_keys
            get = operator.itemgetter(*names) if names else lambda row: ()
            try:
                values = list(map(get, rows))
            except KeyError:
                i, row = next((i, r) for i, r in enumerate(rows) if any(k not in r for k in names))
                missing = [k for k in names if k not in row]
                raise InvalidEntityFrame(
                    f"entity row {i} lacks join key(s) {missing}.",
                    f"Each row needs {list(names)}.",
                ) from None
            # A single key of its declared Python type is its own memo key; anything else is
            # told apart by type too (1, 1.0 and True are equal but different String keys).
            # The common case (every row plain, every key seen before) runs in C: map, no loop.
            if _all_plain(values, plain):
                memos: list[Any] = values
            else:
                single = plain[0] if plain is not None and len(plain) == 1 else None
                memos = [v if v.__class__ is single else (v, _types(v)) for v in values]
            try:
                commands: list[bytes | None] = list(map(encoded.get, memos))
            except TypeError:  # an unhashable value somewhere: refused by _encode
                commands = [_memo_get(encoded, m) for m in memos]
            if None in commands:
                for i, command in enumerate(commands):
                    if command is None:
                        commands[i] = self._encode(group, i, values[i], memos[i], encoded)
            found = cast(list[bytes], commands)  # every row's HMGET now
            for command in dict.fromkeys(found):  # each distinct key once, in order
                if command not in positions:
                    positions[command] = len(self.commands)
                    self.commands.append(command)
            out.append(list(map(positions.__getitem__, found)))
        return out

    def _encode(
        self, group: KeyGroup, i: int, values: Any, memo: Any, encoded: dict[Any, bytes]
    ) -> bytes:
        values = values if len(group.join_keys) != 1 else (values,)
        entity = dict(zip(group.join_keys, values, strict=True))
        if any(isinstance(v, list | dict) for v in values):
            raise InvalidEntityFrame(
                f"entity row {i} has a non-scalar value in {list(group.join_keys)}.",
                "Send each join key as a string or number.",
            )
        try:
            key = wire.entity_key_bytes(entity, group.key_types, self.project)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidEntityFrame(
                f"entity row {i}: {entity} is not a valid key ({exc}).",
                f"Send {list(group.join_keys)} as the types the feature views declare.",
            ) from None
        _, head, tail = _command_parts(group)
        command = b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail)
        with contextlib.suppress(TypeError), self._lock:  # unhashable: not memoized
            if len(encoded) >= 1 << 16:
                encoded.clear()
            encoded[memo] = command
        return command


def _memo_get(encoded: dict[Any, bytes], memo: Any) -> bytes | None:
    try:
        return encoded.get(memo)
    except TypeError:
        return None


def _types(values: Any) -> Any:
    return tuple(map(type, values)) if isinstance(values, tuple) else type(values)


def _plain_classes(group: KeyGroup) -> tuple[type, ...] | None:
    """The Python class each join key's values have once checked (str for a String key, int
    for an integer key), or None if a key has no such class: a row whose keys all have their
    class is its own memo key."""
    classes = []
    for name in group.join_keys:
        dtype = group.key_types.get(name)
        plain = str if dtype == String else int if dtype in (Int64, Int32) else None
        if plain is None:
            return None
        classes.append(plain)
    return tuple(classes) or None


def _all_plain(values: list[Any], classes: tuple[type, ...] | None) -> bool:
    """Every row's keys of their plain class (checked per key column, in C)."""
    if classes is None:
        return False
    if len(classes) == 1:
        return set(map(type, values)) == {classes[0]}
    columns = zip(*values, strict=True)
    return all(set(map(type, c)) == {k} for c, k in zip(columns, classes, strict=True))


_PARTS: dict[tuple[bytes, ...], tuple[tuple[bytes, ...], bytes, bytes]] = {}


def _command_parts(group: KeyGroup) -> tuple[tuple[bytes, ...], bytes, bytes]:
    """A group's HMGET around its key: the header and the fixed field arguments, as RESP."""
    parts = _PARTS.get(group.fields)
    if parts is None:
        head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(group.fields) + 2)
        tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in group.fields)
        parts = _PARTS[group.fields] = (group.fields, head, tail)
    return parts


def _apply_odfv(
    odfv: OnDemandRead,
    rows: Sequence[dict[str, Any]],
    columns: dict[str, list[Any]],
    status: dict[str, list[str]],
) -> None:
    inputs: dict[str, list[Any]] = {}
    for name in odfv.request_fields:
        try:
            inputs[name] = [row[name] for row in rows]
        except KeyError as exc:
            raise InvalidEntityFrame(
                f"on-demand view {odfv.view.name!r} needs request field {name!r}.",
                f"Add {name!r} to every entity row.",
            ) from exc
    for name in odfv.source_features:
        inputs[name] = columns.get(name, [None] * len(rows))
    transformation = odfv.view.feature_transformation
    if odfv.view.mode == "python" and not odfv.view.singleton and transformation is not None:
        # Feast's python-mode transformation is exactly `udf(inputs)` (transform_arrow, used for
        # training frames, calls the same function); calling it directly skips transform_dict's
        # per-call type checks and name aliasing, a third of a 1-row request's time.
        out = transformation.udf(inputs)
    else:
        out = odfv.view.transform_dict(inputs)
    present = [PRESENT] * len(rows)
    for name in odfv.outputs:
        columns[name] = list(out[name])
        status[name] = present
