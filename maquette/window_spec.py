"""Window specs: how monitoring cuts served predictions into windows, written as short text.

`hourly`, `daily`, `weekly` (ISO weeks, Monday 00:00 UTC), `monthly` (calendar months),
`<n>h` / `<n>d` (fixed buckets counted from 1970-01-01 UTC), `<n>w` (counted from Monday
2000-01-03 UTC, so weeks start on Mondays), `<N> labelled` (every N predictions whose label is
known, in request-time order, per partition) and `<N> rows` (every N predictions). All
boundaries are UTC. Durations (`90s`, `15m`, `6h`, `28d`, `2w`) say how long something lasts.

Sits at the level of `config`: only the standard library, pydantic's validator hook and
`maquette.errors`, so settings and model specs can validate their window fields with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator

from maquette.errors import ConfigError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A Monday: `<n>w` buckets start on Mondays, as ISO weeks do.
MONDAY = datetime(2000, 1, 3, tzinfo=UTC)
FORMS = (
    "hourly, daily, weekly, monthly, <n>h, <n>d, <n>w (e.g. 6h, 2w), "
    "<N> labelled (e.g. 500 labelled) or <N> rows (e.g. 1000 rows)"
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_FIXED = re.compile(r"^(\d+)\s*([hdw])$")
_COUNT = re.compile(r"^(\d+)[\s_-]*(labelled|labeled|rows?)$")
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")


@dataclass(frozen=True)
class WindowSpec:
    """One parsed window spec: a time window (`every` or `calendar`) or a count window."""

    text: str  # as written
    name: str  # canonical: "daily", "6h", "2w", "500-labelled", "1000-rows"
    every: timedelta | None  # fixed buckets and hourly/daily/weekly
    calendar: str | None  # "month" for monthly
    count: int | None  # N of "<N> labelled" / "<N> rows"
    counts: str | None  # "labelled" | "rows"
    origin: datetime | None = None  # first bucket start of fixed buckets (added to the SPEC)

    @property
    def is_time(self) -> bool:
        """True for time windows (fixed buckets and calendar months)."""
        return self.count is None

    def _time_only(self, what: str) -> None:
        if not self.is_time:
            raise ConfigError(
                f"window {self.name!r} counts predictions, so it has no fixed {what}.",
                "Use a time window (hourly, daily, weekly, monthly, <n>h, <n>d, <n>w) here.",
            )

    def start_sql(self, column: str) -> str:
        """DuckDB expression: the window start of a TIMESTAMPTZ column (time windows only).

        Plain epoch arithmetic, so the answer does not depend on the session's time zone.
        """
        self._time_only("start")
        if self.calendar == "month":
            return f"(date_trunc('month', ({column}) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
        assert self.every is not None and self.origin is not None
        width = int(self.every.total_seconds())
        origin = int((self.origin - EPOCH).total_seconds())
        return f"to_timestamp(floor((epoch({column}) - {origin}) / {width}) * {width} + {origin})"

    def start_of(self, when: datetime) -> datetime:
        """The start of the time window holding `when` (the Python twin of `start_sql`)."""
        self._time_only("start")
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
        if self.calendar == "month":
            return datetime(when.year, when.month, 1, tzinfo=UTC)
        assert self.every is not None and self.origin is not None
        buckets = (when - self.origin) // self.every
        return self.origin + buckets * self.every

    def end_of(self, start: datetime) -> datetime:
        """The (exclusive) end of the time window starting at `start` (time windows only)."""
        self._time_only("end")
        if self.calendar == "month":
            year, month = (
                (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
            )
            return start.replace(year=year, month=month, day=1)
        assert self.every is not None
        return start + self.every


def _window(text: str, name: str, every: timedelta, origin: datetime = EPOCH) -> WindowSpec:
    return WindowSpec(text, name, every, None, None, None, origin)


def parse_window(text: str) -> WindowSpec:
    """Parse a window spec; ConfigError saying which forms exist on bad text."""
    if not isinstance(text, str):
        raise ConfigError(f"window {text!r} is not text.", f"Write one of: {FORMS}.")
    clean = " ".join(text.strip().lower().split())
    named = {
        "hourly": _window(text, "hourly", timedelta(hours=1)),
        "daily": _window(text, "daily", timedelta(days=1)),
        "weekly": _window(text, "weekly", timedelta(weeks=1), MONDAY),
        "monthly": WindowSpec(text, "monthly", None, "month", None, None),
    }
    if clean in named:
        return named[clean]
    if match := _FIXED.match(clean):
        n, unit = int(match[1]), match[2]
        if n < 1:
            raise ConfigError(f"window {text!r} is empty.", "Use a positive size, e.g. 6h or 2w.")
        if unit == "h" and n % 24 == 0:
            n, unit = n // 24, "d"  # 48h and 2d are the same buckets: one name
        if (n, unit) in {(1, "h"), (1, "d"), (1, "w")}:
            return named[{"h": "hourly", "d": "daily", "w": "weekly"}[unit]]
        every = timedelta(seconds=n * _UNITS[unit])
        return _window(text, f"{n}{unit}", every, MONDAY if unit == "w" else EPOCH)
    if match := _COUNT.match(clean):
        n = int(match[1])
        counts = "rows" if match[2].startswith("row") else "labelled"
        if n < 1:
            raise ConfigError(
                f"window {text!r} holds no predictions.",
                f"Use a positive count, e.g. 500 {counts}.",
            )
        return WindowSpec(text, f"{n}-{counts}", None, None, n, counts)
    raise ConfigError(f"unknown window {text!r}.", f"Write one of: {FORMS}.")


def parse_duration(text: str) -> timedelta:
    """Parse a duration: `90s`, `15m`, `6h`, `28d`, `2w`; ConfigError on bad text."""
    clean = str(text).strip().lower()
    match = _DURATION.match(clean)
    if match is None or int(match[1]) < 1:
        raise ConfigError(
            f"unknown duration {text!r}.",
            "Write a positive number and a unit: s, m, h, d or w (e.g. 90s, 15m, 6h, 28d, 2w).",
        )
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def _valid(parse: Callable[[str], object]) -> AfterValidator:
    def check(value: str) -> str:
        try:
            parse(value)
        except ConfigError as exc:
            # pydantic adds the field's YAML path to a ValueError; the fix rides in the text.
            raise ValueError(f"{exc.message} {exc.remedy}") from exc
        return value

    return AfterValidator(check)


# Settings keep the text as written; code parses it with parse_window / parse_duration.
WindowText = Annotated[str, _valid(parse_window)]
DurationText = Annotated[str, _valid(parse_duration)]
