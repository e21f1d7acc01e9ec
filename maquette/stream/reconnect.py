"""Waiting out a Redis outage: retry with backoff, say once when Redis went and when it came back.

The stream processor keeps running through a Redis crash or restart (supervisord restarts
Redis on the same append-only file): it retries, doubling the wait from `first_s` up to
`longest_s`, and logs two lines per outage, not one per attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from maquette.features.redis_cluster import CLUSTER_UNAVAILABLE

log = logging.getLogger("maquette.stream")

# Redis is away: refused, reset, timed out, or still replaying its AOF (BusyLoadingError is a
# ConnectionError); on a cluster, also a slot without a master (CLUSTERDOWN and the like).
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    *CLUSTER_UNAVAILABLE,
)


@dataclass(frozen=True)
class Backoff:
    """Waits between reconnection attempts: `first_s`, doubling up to `longest_s`."""

    first_s: float = 0.2
    longest_s: float = 5.0

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * 2, self.longest_s)


def without_retries(client: redis.Redis[bytes]) -> None:
    """Make every failed command fail at once, never resent by the client library.

    A resent XREADGROUP would deliver the next entries while those of the lost reply sit in
    the pending list; a resent MULTI could count twice. The processor recovers instead by
    starting again from what Redis committed.
    """
    client.set_retry(Retry(NoBackoff(), 0))  # type: ignore[attr-defined]  # types-redis lags redis-py


def wait_for_redis(
    where: str,
    error: Exception,
    resume: Callable[[], None],
    stop: threading.Event | None = None,
    backoff: Backoff = Backoff(),
) -> bool:
    """Call `resume` until Redis lets it finish; False when `stop` is set first.

    `resume` must start over each time: an attempt may fail half-way. `where` names the
    Redis in the log (`shared_store`: credentials redacted).
    """
    began = time.monotonic()
    log.warning("%s unreachable, retrying (%s)", where, error)
    for delay in backoff.delays():
        if stop is not None:
            if stop.wait(delay):
                log.warning("stopped while %s was unreachable", where)
                return False
        else:
            time.sleep(delay)
        try:
            resume()
        except REDIS_DOWN:
            continue
        log.warning("Redis back after %.1f s", time.monotonic() - began)
        return True
    raise AssertionError("Backoff.delays() never ends")
