"""The processor's window state: each key's recent events, and where it is kept in Redis.

The state hash holds one packed `Window` per (view, key) plus the newest event time seen; the
stats hash holds the committed counters `maquette stream status` prints.
"""

from __future__ import annotations

import bisect
from array import array

from maquette.config import Settings

# The state hash's field holding the newest event time (µs); every other field is a window.
MAX_TIME_FIELD = b"__max_time__"


class Window:
    """One key's event times (µs, sorted) and values, back to the eviction horizon."""

    __slots__ = ("times", "values")

    def __init__(self, times: list[int] | None = None, values: list[float] | None = None) -> None:
        self.times = times or []
        self.values = values or []

    def drop_after(self, time_us: int) -> int:
        """Forget the events later than `time_us`; how many there were."""
        i = bisect.bisect_right(self.times, time_us)
        dropped = len(self.times) - i
        del self.times[i:], self.values[i:]
        return dropped

    def add(self, time_us: int, value: float) -> None:
        i = bisect.bisect_right(self.times, time_us)
        self.times.insert(i, time_us)
        self.values.insert(i, value)

    def changed_by(self, time_us: int, window_us: int) -> set[int]:
        """Times of the rows an event at `time_us` belongs to: those in [t, t + window)."""
        lo = bisect.bisect_left(self.times, time_us)
        hi = bisect.bisect_left(self.times, time_us + window_us)
        return set(self.times[lo:hi])

    def values_at(self, time_us: int, window_us: int) -> list[float]:
        """Values of the events with time_us - window < time <= time_us."""
        lo = bisect.bisect_right(self.times, time_us - window_us)
        hi = bisect.bisect_right(self.times, time_us)
        return self.values[lo:hi]

    def evict_through(self, cutoff_us: int) -> None:
        i = bisect.bisect_right(self.times, cutoff_us)
        del self.times[:i], self.values[:i]

    def dumps(self) -> bytes:
        return array("q", self.times).tobytes() + array("d", self.values).tobytes()

    @classmethod
    def loads(cls, raw: bytes) -> Window:
        half = len(raw) // 2
        return cls(array("q", raw[:half]).tolist(), array("d", raw[half:]).tolist())


def state_key(settings: Settings) -> str:
    """The Redis hash of the processor's committed windows."""
    return f"{settings.stream.stream}:state"


def stats_key(settings: Settings) -> str:
    """The Redis hash of the processor's committed counters, watermark and commit time."""
    return f"{settings.stream.stream}:stats"
