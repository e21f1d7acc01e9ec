"""Online reads: features for entity rows from Redis, with a status per value.

One pipelined HMGET per distinct entity key and key group answers a whole batch of requests.
Values older than their view's TTL are flagged OUTSIDE_MAX_AGE, which Feast's own online read
does not do; on-demand views are computed from the request fields and the stored features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from maquette.config import Settings
from maquette.data.redis_server import unreachable
from maquette.errors import InvalidEntityFrame
from maquette.features import redis_layout as wire
from maquette.features.read_plan import KeyGroup, OnDemandRead, ReadPlan

# A value's status, in Feast's names.
PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE = "PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE"

# One request of a batch: entity rows, its read plan, and the time values are judged against.
PlannedRequest = tuple[Sequence[dict[str, Any]], ReadPlan, datetime | None]
# Decoded key groups by (reply position, as-of seconds): shared rows are decoded once.
_Decoded = dict[tuple[int, float], tuple[dict[str, Any], dict[str, str]]]


@dataclass
class OnlineFeatures:
    """Features for a list of entity rows, with a status per value (Feast's status names)."""

    names: list[str]
    values: list[dict[str, Any]]
    statuses: list[dict[str, str]]

    def to_dict(self) -> dict[str, list[Any]]:
        """Column-oriented like Feast's `OnlineResponse.to_dict()`."""
        return {n: [row[n] for row in self.values] for n in self.names}

    def missing(self, i: int) -> list[str]:
        """Names of row i's features that Redis does not hold."""
        return [n for n, s in self.statuses[i].items() if s == NOT_FOUND]

    def stale(self, i: int) -> list[str]:
        """Names of row i's features older than their view's TTL."""
        return [n for n, s in self.statuses[i].items() if s == OUTSIDE_MAX_AGE]


def read_online(
    settings: Settings, client: redis.Redis[bytes], requests: Sequence[PlannedRequest]
) -> list[OnlineFeatures | InvalidEntityFrame]:
    """Each request's features in one Redis round trip; a request lacking a join key (or with
    values no key or on-demand view accepts) gets its error, the others answer."""
    reads = _Reads(client.pipeline(transaction=False), settings.feast.project)
    queued: list[list[list[int]] | InvalidEntityFrame] = []
    for rows, plan, _ in requests:
        try:
            _check_join_keys(plan, rows)
            queued.append(reads.queue(plan, rows))
        except InvalidEntityFrame as exc:
            queued.append(exc)
    try:
        replies = reads.pipe.execute() if len(reads.pipe) else []
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise unreachable(settings, exc) from exc
    decoded: _Decoded = {}
    return [
        positions
        if isinstance(positions, InvalidEntityFrame)
        else _answer(plan, rows, as_of, positions, replies, decoded)
        for positions, (rows, plan, as_of) in zip(queued, requests, strict=True)
    ]


def _answer(
    plan: ReadPlan,
    rows: Sequence[dict[str, Any]],
    as_of: datetime | None,
    positions: list[list[int]],
    replies: list[Any],
    decoded: _Decoded,
) -> OnlineFeatures | InvalidEntityFrame:
    now = (as_of or datetime.now(UTC)).timestamp()
    values: list[dict[str, Any]] = [{} for _ in rows]
    statuses: list[dict[str, str]] = [{} for _ in rows]
    try:
        for group, where in zip(plan.groups, positions, strict=True):
            for i, pos in enumerate(where):
                found = decoded.get((pos, now))
                if found is None:
                    found = decoded[(pos, now)] = _decode_group(group, replies[pos], now)
                values[i].update(found[0])
                statuses[i].update(found[1])
        for odfv in plan.odfvs:
            _apply_odfv(odfv, rows, values, statuses)
    except InvalidEntityFrame as exc:
        return exc
    except Exception as exc:  # e.g. an on-demand view's function on a year-1 time
        return InvalidEntityFrame(
            f"the request's values could not be turned into features: {type(exc).__name__}: {exc}",
            "Check the types and ranges of the request fields.",
        )
    return OnlineFeatures(list(plan.names), values, statuses)


def _check_join_keys(plan: ReadPlan, rows: Sequence[dict[str, Any]]) -> None:
    for group in plan.groups:
        for i, row in enumerate(rows):
            missing = [k for k in group.join_keys if k not in row]
            if missing:
                raise InvalidEntityFrame(
                    f"entity row {i} lacks join key(s) {missing}.",
                    f"Each row needs {list(group.join_keys)}.",
                )


class _Reads:
    """HMGETs queued on one pipeline: one per distinct Redis key and key group, however many
    rows (and batched requests) share it: 100 rows with the same entity read its hash once.

    Rows are matched on the encoded key, not the raw values (1, 1.0 and True are equal in
    Python but are different String keys).
    """

    def __init__(self, pipe: redis.client.Pipeline[bytes], project: str) -> None:
        self.pipe, self.project = pipe, project
        self.position: dict[tuple[tuple[bytes, ...], bytes], int] = {}

    def queue(self, plan: ReadPlan, rows: Sequence[dict[str, Any]]) -> list[list[int]]:
        """Per key group, the reply position of each row."""
        out = []
        for group in plan.groups:
            where = []
            for i, row in enumerate(rows):
                key = self._key(group, i, row)
                pos = self.position.get((group.fields, key))
                if pos is None:
                    pos = self.position[(group.fields, key)] = len(self.pipe)
                    self.pipe.hmget(key, group.fields)
                where.append(pos)
            out.append(where)
        return out

    def _key(self, group: KeyGroup, i: int, row: dict[str, Any]) -> bytes:
        entity = {k: row[k] for k in group.join_keys}
        if any(isinstance(v, list | dict) for v in entity.values()):
            raise InvalidEntityFrame(
                f"entity row {i} has a non-scalar value in {list(group.join_keys)}.",
                "Send each join key as a string or number.",
            )
        try:
            return wire.entity_key_bytes(entity, group.key_types, self.project)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidEntityFrame(
                f"entity row {i}: {entity} is not a valid key ({exc}).",
                f"Send {list(group.join_keys)} as the types the feature views declare.",
            ) from None


def _decode_group(
    group: KeyGroup, reply: list[bytes | None], now: float
) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    statuses: dict[str, str] = {}
    pos = 0
    for view in group.views:
        raw_ts = reply[pos + len(view.features)]
        written = wire.decode_timestamp_seconds(raw_ts)
        status = (
            NOT_FOUND
            if written is None
            else (
                OUTSIDE_MAX_AGE
                if view.ttl_s is not None and written + view.ttl_s < now
                else PRESENT
            )
        )
        for j, name in enumerate(view.features):
            raw = reply[pos + j]
            values[name] = wire.decode_value(raw)
            statuses[name] = NOT_FOUND if raw is None else status
        pos += len(view.features) + 1
    return values, statuses


def _apply_odfv(
    odfv: OnDemandRead,
    rows: Sequence[dict[str, Any]],
    values: list[dict[str, Any]],
    statuses: list[dict[str, str]],
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
        inputs[name] = [v.get(name) for v in values]
    transformation = odfv.view.feature_transformation
    if odfv.view.mode == "python" and not odfv.view.singleton and transformation is not None:
        # Feast's python-mode transformation is exactly `udf(inputs)` (transform_arrow, used for
        # training frames, calls the same function); calling it directly skips transform_dict's
        # per-call type checks and name aliasing, a third of a 1-row request's time.
        out = transformation.udf(inputs)
    else:
        out = odfv.view.transform_dict(inputs)
    for name in odfv.outputs:
        for i, value in enumerate(out[name]):
            values[i][name] = value
            statuses[i][name] = PRESENT
