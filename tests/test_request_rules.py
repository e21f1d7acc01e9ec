"""The column-wise check of usual requests gives exactly what the row-by-row checks give.

`check_rows` answers the usual request (declared fields only, plain JSON values of the declared
types) column by column and everything else row by row; the row-by-row path is the reference.
Random requests mixing usual rows with every kind of odd value must get the same rows back, or
the same error, either way.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from feast.types import Int64, String

from maquette.errors import InvalidEntityFrame
from maquette.serving.request_rules import (
    RequestLimits,
    _checked_one_by_one,
    _Fields,
    _key_kinds,
    _plain_rows,
    check_rows,
)

REQUIRED = ("origin", "flight_id", "departs", "distance")
KEY_TYPES = {"origin": String, "flight_id": Int64}
TIMES = ("departs",)
DAY = timedelta(days=1)
LIMITS = RequestLimits(100, 6, 30, DAY, DAY, "1d", "1d")

USUAL: dict[str, list[Any]] = {
    "origin": ["JFK", "EWR", "LGA"],
    "flight_id": [1, 7, 2**63 - 1, -(2**63)],
    "departs": ["2013-12-24T11:31:00+00:00", "2013-12-24T06:31:00-05:00", "2013-12-24T11:31:00Z"],
    "distance": [1.5, 944, True, "far"],
}
ODD: list[Any] = [
    None,
    "",
    " 2013-12-24T11:31:00Z",
    "2013-12-24T11:31:00",
    "2013-12-24",
    1387884660,
    7.0,
    7.5,
    2**63,
    "12",
    "x" * 31,
    False,
    [1],
    {"a": 1},
]


def _fields() -> _Fields:
    return _Fields(REQUIRED, *_key_kinds(KEY_TYPES, REQUIRED), TIMES)


def _usual_row(rng: random.Random) -> dict[str, Any]:
    row = {name: rng.choice(values) for name, values in USUAL.items()}
    return dict(rng.sample(list(row.items()), len(row)))  # any field order


def _odd_row(rng: random.Random) -> dict[str, Any]:
    row = _usual_row(rng)
    change = rng.randrange(4)
    if change == 0:
        row[rng.choice(REQUIRED)] = rng.choice(ODD)
    elif change == 1:
        del row[rng.choice(REQUIRED)]
    elif change == 2:
        row["extra"] = rng.choice([*ODD, "fine"])
    else:
        row["a"], row["b"], row["c"] = 1, 2, 3  # more fields than the limit
    return row


def _outcome(check: Any, rows: list[dict[str, Any]]) -> Any:
    try:
        return check(rows)
    except InvalidEntityFrame as exc:
        return ("refused", exc.message)


def test_usual_requests_take_the_column_path_and_get_what_the_row_path_gives() -> None:
    rng = random.Random(18)
    fields = _fields()
    for _ in range(300):
        rows = [_usual_row(rng) for _ in range(rng.randrange(1, 8))]
        plain = _plain_rows(rows, fields, LIMITS)
        assert plain is not None, rows
        reference = _checked_one_by_one(rows, fields, LIMITS, "m:v1")
        assert plain == reference
        assert [list(r) for r in plain] == [list(r) for r in reference]  # same field order
        assert all(isinstance(r["departs"], datetime) and r["departs"].tzinfo is UTC for r in plain)


def test_odd_requests_get_the_same_rows_or_the_same_error_as_row_by_row() -> None:
    rng = random.Random(19)
    fields = _fields()
    taken = 0
    for _ in range(2000):
        rows = [
            _odd_row(rng) if rng.random() < 0.3 else _usual_row(rng)
            for _ in range(rng.randrange(1, 6))
        ]
        reference = _outcome(lambda r: _checked_one_by_one(r, fields, LIMITS, "m:v1"), rows)
        plain = _plain_rows(rows, fields, LIMITS)
        if plain is not None:
            taken += 1
            assert plain == reference, rows
        served = _outcome(lambda r: check_rows(r, REQUIRED, KEY_TYPES, TIMES, LIMITS, "m:v1"), rows)
        assert served == reference, rows
    assert taken > 100  # the column path was exercised, not only the fallback


@pytest.mark.parametrize(
    "row",
    [
        {"origin": "JFK", "flight_id": 1, "departs": "2013-12-24T11:31:00", "distance": 1.0},
        {"origin": "JFK", "flight_id": True, "departs": "2013-12-24T11:31:00Z", "distance": 1.0},
        {"origin": "", "flight_id": 1, "departs": "2013-12-24T11:31:00Z", "distance": 1.0},
        {"origin": "JFK", "flight_id": 2**63, "departs": "2013-12-24T11:31:00Z", "distance": 1},
    ],
)
def test_a_row_the_column_path_declines_is_refused_with_its_reason(row: dict[str, Any]) -> None:
    assert _plain_rows([row], _fields(), LIMITS) is None
    with pytest.raises(InvalidEntityFrame, match="row 0"):
        check_rows([row], REQUIRED, KEY_TYPES, TIMES, LIMITS, "m:v1")


def test_a_z_inside_a_time_is_refused_as_request_time_refuses_it() -> None:
    # request_time reads every "Z" as +00:00, so "…Z14:05Z" is no time: the column path too.
    row = {"origin": "JFK", "flight_id": 1, "departs": "2024-06-01Z14:05Z", "distance": 1.0}
    assert _plain_rows([row], _fields(), LIMITS) is None
    with pytest.raises(InvalidEntityFrame, match="row 0 field 'departs'"):
        check_rows([row], REQUIRED, KEY_TYPES, TIMES, LIMITS, "m:v1")
