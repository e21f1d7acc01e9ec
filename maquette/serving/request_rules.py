"""What a prediction request may carry: the checks every request passes before any work.

The service's clients are not trusted: a request's `as_of` becomes the logged request time that
monitoring windows are cut by, its entity keys become Redis keys and logged columns, and every
field it carries could reach the prediction log. So before a request reads a feature:

- `as_of` has a time zone and lies within `serving.as_of_max_past` before and
  `serving.as_of_max_future` after the server's clock;
- it holds 1..`serving.max_rows` rows of at most `serving.max_fields_per_row` fields, each text
  value at most `serving.max_string_chars` long;
- each entity key is of its declared type: a number sent for a String key becomes its text,
  digits sent for an Int64 key become the number, anything else (or a number past the key's
  range) is refused;
- only the model's declared entity keys and request fields are kept (extra fields are ignored,
  never logged).

Each failure is the request's own 422 (`InvalidEntityFrame`), naming the field and the fix.
"""

from __future__ import annotations

import itertools
import numbers
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from feast.types import FeastType, Int32, Int64, String

from maquette.config import Settings
from maquette.errors import InvalidEntityFrame
from maquette.features.entity_rows import request_time
from maquette.window_spec import parse_duration

# JSON's containers: a row's values are single values (library mode may pass numpy numbers and
# datetimes, which are single values too).
CONTAINERS = (list, dict, tuple, set)
_DIGITS = re.compile(r"[+-]?[0-9]{1,19}")
# The range of each integer key type (Feast writes them as fixed-width little-endian).
INT_RANGES: dict[FeastType, tuple[int, int]] = {
    Int64: (-(2**63), 2**63 - 1),
    Int32: (-(2**31), 2**31 - 1),
}


@dataclass(frozen=True)
class RequestLimits:
    """The bounds of one request, read once from `serving.*`."""

    max_rows: int
    max_fields: int
    max_chars: int
    max_past: timedelta
    max_future: timedelta
    past_text: str
    future_text: str

    @classmethod
    def of(cls, settings: Settings) -> RequestLimits:
        s = settings.serving
        return cls(
            s.max_rows,
            s.max_fields_per_row,
            s.max_string_chars,
            parse_duration(s.as_of_max_past),
            parse_duration(s.as_of_max_future),
            s.as_of_max_past,
            s.as_of_max_future,
        )


def check_as_of(as_of: datetime | None, received: datetime, limits: RequestLimits) -> datetime:
    """The request's time: `as_of` when it is usable, else the time it was received."""
    if as_of is None:
        return received
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise InvalidEntityFrame(
            f"as_of {as_of.isoformat()} has no time zone.",
            "Send as_of in ISO 8601 with a zone, e.g. 2013-12-31T15:00:00Z.",
        )
    # Compared as offsets from the clock, so a year-1 or year-9999 time cannot overflow.
    earliest, latest = _shifted(received, -limits.max_past), _shifted(received, limits.max_future)
    if not earliest <= as_of <= latest:
        raise InvalidEntityFrame(
            f"as_of {as_of.isoformat()} is outside the window the service accepts: "
            f"{limits.past_text} before to {limits.future_text} after its clock "
            f"({earliest.isoformat(timespec='seconds')} .. {latest.isoformat(timespec='seconds')}).",
            "Send a time within it, or widen serving.as_of_max_past / serving.as_of_max_future "
            "(e.g. to replay older data).",
        )
    return as_of


def _shifted(moment: datetime, by: timedelta) -> datetime:
    try:
        return moment + by
    except OverflowError:
        edge = datetime.max if by > timedelta(0) else datetime.min
        return edge.replace(tzinfo=moment.tzinfo)


# Values a row may hold as they are (text is checked for its length): JSON's scalars.
_PLAIN = frozenset({int, float, bool, type(None)})
_PLAIN_OR_TEXT = _PLAIN | {str}


def check_rows(
    rows: list[dict[str, Any]],
    required: tuple[str, ...],
    key_types: Mapping[str, FeastType],
    time_fields: tuple[str, ...],
    limits: RequestLimits,
    tag: str,
) -> list[dict[str, Any]]:
    """The rows with only their declared fields, keys typed and times parsed; 422 otherwise.

    The usual request (exactly the declared fields, plain JSON values of the declared types)
    is checked column by column in C; anything else row by row, which words the error (a
    100-row request spent more time here than in its Redis read).
    """
    check_size(rows, limits)
    fields = _Fields(required, *_key_kinds(key_types, required), time_fields)
    plain = _plain_rows(rows, fields, limits)
    return plain if plain is not None else _checked_one_by_one(rows, fields, limits, tag)


@dataclass(frozen=True)
class _Fields:
    """A version's request fields by how they are checked."""

    required: tuple[str, ...]
    string_keys: list[str]
    int_keys: list[tuple[str, FeastType, int, int]]
    other_keys: list[tuple[str, FeastType]]
    time_fields: tuple[str, ...]


def _checked_one_by_one(
    rows: list[dict[str, Any]], fields: _Fields, limits: RequestLimits, tag: str
) -> list[dict[str, Any]]:
    required = fields.required
    max_fields, max_chars = limits.max_fields, limits.max_chars
    cleaned = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidEntityFrame(
                f"row {i} is not an object.", "Send each row as an object of field: value."
            )
        if len(row) > max_fields:
            raise InvalidEntityFrame(
                f"row {i} carries {len(row)} fields; the limit is {limits.max_fields}.",
                f"Send only the fields model {tag} needs: {list(required)}.",
            )
        for name, value in row.items():
            kind = value.__class__
            if kind is str:
                if len(value) > max_chars:
                    _check_value(i, name, value, limits)
            elif kind not in _PLAIN:
                _check_value(i, name, value, limits)
        out = {k: row.get(k) for k in required}  # extra fields are ignored: never logged
        kept = out.values()
        if None in kept or "" in kept:
            missing = [k for k in required if out[k] in (None, "")]
            raise InvalidEntityFrame(
                f"row {i} lacks {missing}.",
                f"Model {tag} needs {list(required)} in every row.",
            )
        for name in fields.string_keys:
            if out[name].__class__ is not str:
                out[name] = typed_key(out[name], String, f"row {i} key {name!r}")
        for name, dtype, low, high in fields.int_keys:
            value = out[name]
            if value.__class__ is not int or not low <= value <= high:
                out[name] = typed_key(value, dtype, f"row {i} key {name!r}")
        for name, dtype in fields.other_keys:
            out[name] = typed_key(out[name], dtype, f"row {i} key {name!r}")
        for name in fields.time_fields:
            value = out[name]
            when = _aware_iso(value) if value.__class__ is str else None
            out[name] = when or request_time(value, f"row {i} field {name!r}")
        cleaned.append(out)
    return cleaned


def _plain_rows(
    rows: list[dict[str, Any]], fields: _Fields, limits: RequestLimits
) -> list[dict[str, Any]] | None:
    """`check_rows`' answer for the usual request, checked column by column in C: every row
    holds exactly the declared fields, keys already of their type, times ISO text with a zone,
    every value plain JSON. None for anything else, which the per-row checks then judge (and
    word the error for); tests/test_request_rules.py holds both paths equal."""
    required, time_fields = fields.required, fields.time_fields
    if fields.other_keys or len(required) > limits.max_fields or set(map(type, rows)) != {dict}:
        return None
    declared = frozenset(required)
    if not all(map(operator.eq, map(dict.keys, rows), itertools.repeat(declared))):
        return None
    strings = set(fields.string_keys)
    ints = {name: (low, high) for name, _, low, high in fields.int_keys}
    times: dict[str, list[datetime | None]] = {}
    for name in required:
        column = list(map(operator.itemgetter(name), rows))
        kinds = set(map(type, column))
        if name in ints:
            low, high = ints[name]
            if kinds != {int} or not (low <= min(column) and max(column) <= high):
                return None
        elif name in strings or name in time_fields:
            if kinds != {str}:
                return None
        elif not kinds <= _PLAIN_OR_TEXT or type(None) in kinds:
            return None
        if str in kinds:
            texts = column if len(kinds) == 1 else [v for v in column if v.__class__ is str]
            if "" in texts or max(map(len, texts)) > limits.max_chars:
                return None
        if name in time_fields:
            times[name] = list(map(_aware_iso, column))
            if None in times[name]:
                return None
    cleaned = [{k: row[k] for k in required} for row in rows]  # in `required` order, as below
    for name, parsed in times.items():
        for row, when in zip(cleaned, parsed, strict=True):
            row[name] = when
    return cleaned


def _aware_iso(text: str) -> datetime | None:
    """An ISO 8601 time with a zone, in UTC (`request_time`'s answer for such text, without
    its fallbacks); None for anything else, which `request_time` then judges."""
    if "Z" in text[:-1]:  # request_time reads every "Z" as +00:00: a "Z" inside is its call
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when if when.tzinfo is UTC else when.astimezone(UTC)


def _key_kinds(
    key_types: Mapping[str, FeastType], required: tuple[str, ...]
) -> tuple[list[str], list[tuple[str, FeastType, int, int]], list[tuple[str, FeastType]]]:
    """The request's entity keys by how they are checked: text, integers in a range, other."""
    strings, ints, other = [], [], []
    for name, dtype in key_types.items():
        if name not in required:
            continue
        if dtype == String:
            strings.append(name)
        elif dtype in INT_RANGES:
            ints.append((name, dtype, *INT_RANGES[dtype]))
        else:
            other.append((name, dtype))
    return strings, ints, other


def _check_value(i: int, name: Any, value: Any, limits: RequestLimits) -> None:
    """A row's value that is not plain JSON text or a number: refused if it is a container or
    text past the limit (library mode may pass numpy numbers and datetimes, which pass)."""
    if isinstance(value, CONTAINERS):
        raise InvalidEntityFrame(
            f"row {i} field {str(name)[:64]!r} holds a non-scalar value ({type(value).__name__}).",
            "Send text, a number, true/false or null as each value.",
        )
    if isinstance(value, str) and len(value) > limits.max_chars:
        raise InvalidEntityFrame(
            f"row {i} field {str(name)[:64]!r} holds {len(value)} characters; the limit "
            f"is {limits.max_chars}.",
            "Send shorter values (serving.max_string_chars sets the limit).",
        )


def check_size(rows: list[dict[str, Any]], limits: RequestLimits) -> None:
    """1..max_rows rows, else 422."""
    if not rows:
        raise InvalidEntityFrame("the request holds no rows.", "Send at least one row.")
    if len(rows) > limits.max_rows:
        raise InvalidEntityFrame(
            f"the request holds {len(rows)} rows; the limit is {limits.max_rows}.",
            "Split it into smaller batches (serving.max_rows sets the limit).",
        )


def typed_key(value: Any, dtype: FeastType, where: str) -> Any:
    """An entity key's value as its declared type (String or Int32/Int64); 422 otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | numbers.Real):
        raise InvalidEntityFrame(
            f"{where} is {type(value).__name__} {_shown(value)}; it is declared {dtype}.",
            "Send a text or a number as the key.",
        )
    if dtype == String:
        if isinstance(value, numbers.Integral):
            value = int(value)  # numpy's too: str(np.int64(7)) is "7", and so is this
        elif isinstance(value, numbers.Real):
            value = float(value)
            if not value.is_integer() or abs(value) >= 2**63:  # 1e300 is a 301-digit text
                raise InvalidEntityFrame(
                    f"{where} is the number {value!r}; it is declared String.",
                    "Send the key as text.",
                )
            value = int(value)
        return str(value)
    if dtype in INT_RANGES:
        number = _integer(value)
        low, high = INT_RANGES[dtype]
        if number is None or not low <= number <= high:
            raise InvalidEntityFrame(
                f"{where} is {_shown(value)}; it is declared {dtype} ({low}..{high}).",
                "Send a whole number within that range.",
            )
        return number
    return value


def _integer(value: str | numbers.Real) -> int | None:
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return int(number) if number.is_integer() else None
    # At most 19 digits (2**63 has 19): a longer text is out of range without converting it.
    return int(value) if _DIGITS.fullmatch(value.strip()) else None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
