"""Running the stream processor in the foreground until a signal, idleness or an event count."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from maquette.config import Settings
from maquette.data.redis_server import ensure_redis
from maquette.stream.processor import RunResult, StreamProcessor


def run_until_stopped(
    settings: Settings,
    until_idle_s: float | None = None,
    max_events: int | None = None,
    announce: Callable[[str], None] | None = None,
) -> RunResult:
    """Run a processor until SIGINT or SIGTERM, `until_idle_s` without events, or `max_events`.

    A signal stops it between two polls, after a last commit, so nothing read is left
    unacknowledged by choice.
    """
    ensure_redis(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    processor = StreamProcessor(settings)
    if announce:
        announce(f"processing {settings.stream.stream} (group {settings.stream.group})")
    return processor.run(until_idle_s, max_events, stop)
