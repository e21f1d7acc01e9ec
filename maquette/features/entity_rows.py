"""Entity rows typed from text (`maquette features get KEY=VALUE ...`), by the feature repo.

Each value takes the type its field is declared with in the feature service: a join key of an
entity declared `ValueType.INT64` becomes an int (`user_id=7` -> 7), a request field declared
`UnixTimestamp` becomes a UTC datetime, a float field a float; a field the service does not
declare stays text. `request_time` is the one parser of request times, shared with serving.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from feast.types import Bool, FeastType, Float32, Float64, Int32, Int64, UnixTimestamp

from maquette.errors import InvalidEntityFrame
from maquette.features.layer import FeatureLayer
from maquette.features.read_plan import Features

# How text becomes each declared type (anything else, String included, stays text).
_FROM_TEXT: dict[FeastType, Callable[[str], Any]] = {
    Int64: int,
    Int32: int,
    Float64: float,
    Float32: float,
    Bool: lambda text: _boolean(text),
}
# Unix seconds sent as text: digits, an optional sign and fraction (ASCII only).
_SECONDS = re.compile(r"[+-]?[0-9]+(\.[0-9]*)?", re.ASCII)


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "true", "yes"):
        return True
    if word in ("0", "false", "no"):
        return False
    raise ValueError(text)


def field_types(layer: FeatureLayer, features: Features | None = None) -> dict[str, FeastType]:
    """The declared type of every join key and request field of a feature service (default:
    the configured one); none before `feast apply`."""
    if not layer.settings.registry_path.is_file():
        return {}  # reading then says the registry is missing, with its remedy
    return layer.read_plan(features or layer.settings.default_feature_service()).field_types


def entity_row(
    layer: FeatureLayer, values: Mapping[str, str], features: Features | None = None
) -> dict[str, Any]:
    """One entity row for `FeatureLayer.online_features`, from field names and text values."""
    types = field_types(layer, features)
    return {key: typed_value(key, text, types.get(key)) for key, text in values.items()}


def typed_value(key: str, text: str, dtype: FeastType | None) -> Any:
    """`text` as a value of the declared type (text when the type is unknown or a string)."""
    if dtype == UnixTimestamp:
        return request_time(text, key, naive_is_utc=True)
    parse = _FROM_TEXT.get(dtype) if dtype is not None else None
    if parse is None:
        return text
    try:
        return parse(text)
    except ValueError:
        raise InvalidEntityFrame(
            f"{key}={text!r} is not a {dtype}, the type the feature repo declares for {key!r}.",
            f"Write {key}= followed by a value of that type.",
        ) from None


def request_time(value: Any, what: str, naive_is_utc: bool = False) -> datetime:
    """A request field declared as a timestamp, in UTC: an ISO 8601 time ("Z" allowed) or a
    number of seconds since 1970. A time without a zone is refused unless `naive_is_utc`."""
    if isinstance(value, str):
        text = value.strip()
        # ISO first: "20240601" is a date in ISO 8601's basic format, not 20 million seconds.
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            try:
                value = float(text) if _SECONDS.fullmatch(text) else None
            except ValueError:
                value = None
            if value is None:
                raise InvalidEntityFrame(
                    f"{what} is {text!r}, not an ISO time.", "Send e.g. 2024-06-01T14:05:00Z."
                ) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            value = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidEntityFrame(
                f"{what} is {value!r}, outside the times a timestamp can hold.",
                "Send an ISO time such as 2024-06-01T14:05:00Z.",
            ) from None
    if not isinstance(value, datetime):
        raise InvalidEntityFrame(f"{what} is not a time.", "Send an ISO time with a zone.")
    when: datetime = value
    if when.tzinfo is None:
        if not naive_is_utc:
            raise InvalidEntityFrame(
                f"{what} has no time zone.", "Add one, e.g. 2024-06-01T14:05:00Z."
            )
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)
