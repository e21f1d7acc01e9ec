"""Pure, typed feature functions, shared by training (batch) and serving (one row).

Each takes a sequence of timezone-aware datetimes (what Feast hands a python-mode on-demand
feature view) and returns one value per input, vectorized with numpy so the same code serves
336,776 training rows and a single request.

Below `_SMALL` values a plain-Python path (zoneinfo, bisect) answers in microseconds where
pandas needs ~100 us to build an index; up to `_LARGE` values (a multi-row request) each time's
UTC offset comes from a memo per quarter hour (every zone's offset changes on a quarter hour)
and the rest is numpy; beyond, pandas. A test keeps the paths equal.
"""

from __future__ import annotations

import operator
from bisect import bisect_left
from collections.abc import Sequence
from datetime import date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

_SMALL = 16
_LARGE = 4096
_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()
_QUARTER_HOUR = 900


@lru_cache(maxsize=16)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def _local_small(timestamps: Sequence[datetime], tz: str) -> list[datetime]:
    zone = _zone(tz)
    out = []
    for ts in timestamps:
        if ts.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (UTC); got naive datetimes")
        out.append(ts.astimezone(zone))
    return out


# UTC offsets in seconds by (zone, quarter hour since 1970): bounded, cleared when full.
_OFFSETS: dict[tuple[str, int], int] = {}


def _local_seconds(timestamps: Sequence[datetime], tz: str) -> np.ndarray:
    """Local wall-clock seconds since 1970 of each time (its UTC seconds plus its offset)."""
    if None in map(_TZINFO, timestamps):
        raise ValueError("timestamps must be timezone-aware (UTC); got naive datetimes")
    seconds = np.floor(np.fromiter(map(_TIMESTAMP, timestamps), float, len(timestamps)))
    seconds = seconds.astype(np.int64)
    # One offset per distinct quarter hour (a request's times share a few), then by index.
    blocks, where = np.unique(seconds // _QUARTER_HOUR, return_inverse=True)
    zone = _zone(tz)
    offsets = np.empty(len(blocks), dtype=np.int64)
    for k, block in enumerate(blocks.tolist()):
        offset = _OFFSETS.get((tz, block))
        if offset is None:
            if len(_OFFSETS) > 1 << 16:
                _OFFSETS.clear()
            shift = datetime.fromtimestamp(block * _QUARTER_HOUR, zone).utcoffset()
            offset = _OFFSETS[(tz, block)] = int(shift.total_seconds()) if shift else 0
        offsets[k] = offset
    local: np.ndarray = seconds + offsets[where.reshape(-1)]
    return local


_TZINFO = operator.attrgetter("tzinfo")
_TIMESTAMP = operator.methodcaller("timestamp")


def _local(timestamps: Sequence[datetime], tz: str) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(timestamps)
    if index.tz is None:
        raise ValueError("timestamps must be timezone-aware (UTC); got naive datetimes")
    return index.tz_convert(tz)


def local_hour(timestamps: Sequence[datetime], tz: str) -> list[int]:
    """Hour of day (0-23) in time zone `tz`."""
    if len(timestamps) < _SMALL:
        return [t.hour for t in _local_small(timestamps, tz)]
    if len(timestamps) < _LARGE:
        hours_of_day: list[int] = (_local_seconds(timestamps, tz) // 3600 % 24).tolist()
        return hours_of_day
    hours: list[int] = _local(timestamps, tz).hour.tolist()
    return hours


def day_of_week(timestamps: Sequence[datetime], tz: str) -> list[int]:
    """Day of week in `tz`, Monday = 0."""
    if len(timestamps) < _SMALL:
        return [t.weekday() for t in _local_small(timestamps, tz)]
    if len(timestamps) < _LARGE:  # 1970-01-01 was a Thursday (3)
        days: list[int] = ((_local_seconds(timestamps, tz) // 86400 + 3) % 7).tolist()
        return days
    weekdays: list[int] = _local(timestamps, tz).dayofweek.tolist()
    return weekdays


@lru_cache(maxsize=8)
def _us_holiday_days(first_year: int, last_year: int) -> np.ndarray:
    from pandas.tseries.holiday import USFederalHolidayCalendar

    days = USFederalHolidayCalendar().holidays(f"{first_year}-01-01", f"{last_year}-12-31")
    ordinals: np.ndarray = days.values.astype("datetime64[D]").astype(np.int64)
    return ordinals


def days_to_nearest_us_holiday(timestamps: Sequence[datetime], tz: str) -> list[int]:
    """Absolute days between the local date and the nearest US federal holiday."""
    if 0 < len(timestamps) < _SMALL:
        return [_days_to_holiday_one(t) for t in _local_small(timestamps, tz)]
    if _SMALL <= len(timestamps) < _LARGE:
        days = _local_seconds(timestamps, tz) // 86400
        first, last = (
            date.fromordinal(int(d) + _EPOCH_ORDINAL).year for d in (days.min(), days.max())
        )
    else:
        local = _local(timestamps, tz)
        if len(local) == 0:
            return []
        days = local.tz_localize(None).values.astype("datetime64[D]").astype(np.int64)
        first, last = int(local.year.min()), int(local.year.max())
    # One year of margin on each side so the nearest holiday may lie across New Year.
    holidays = _us_holiday_days(first - 1, last + 1)
    right = np.clip(np.searchsorted(holidays, days), 0, len(holidays) - 1)
    left = np.clip(right - 1, 0, len(holidays) - 1)
    nearest = np.minimum(np.abs(holidays[right] - days), np.abs(days - holidays[left]))
    distances: list[int] = nearest.tolist()
    return distances


def _days_to_holiday_one(local: datetime) -> int:
    day = local.toordinal() - _EPOCH_ORDINAL
    holidays = _us_holiday_list(local.year - 1, local.year + 1)
    right = min(bisect_left(holidays, day), len(holidays) - 1)
    left = max(right - 1, 0)
    return int(min(abs(holidays[right] - day), abs(day - holidays[left])))


@lru_cache(maxsize=64)
def _us_holiday_list(first_year: int, last_year: int) -> list[int]:
    days: list[int] = _us_holiday_days(first_year, last_year).tolist()
    return days
