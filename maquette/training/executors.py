"""Where training's independent fits run (`training.executor`): in order in this process, or as
Ray tasks side by side on a Ray cluster.

Both run the same module-level function on the same inputs and return results in submission
order, so a search on Ray picks the same best trial, and keeps the same partitions, as one run
here with the same seed: LightGBM fits with a fixed seed, a fixed thread count and
`deterministic: true` give the same trees wherever they run (tests/test_ray.py checks it).

On Ray, what every fit shares (the training frames) is put in Ray's object store once, and each
fit is a task asking as many CPUs as it runs threads (LightGBM's `num_threads`, 2 unless the
spec's params say): side by side only where the CPUs allow. With no `training.ray_address`, a
Ray is started in this process for the training run and stopped after it; `auto` or
`ray://...` joins one that runs already (whose workers must have this project's Python
packages: the same image or virtualenv).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from maquette.errors import ConfigError
from maquette.model_spec import TrainingSettings

T = TypeVar("T")
# The object store of a Ray started here holds one copy of the training frames (the demo's
# are ~100 MB); Ray's default, 30% of the machine's memory, would reserve gigabytes of /dev/shm.
OBJECT_STORE_BYTES = 1 << 30


@dataclass(frozen=True)
class Fits:
    """Runs `fn(shared, *item)` for each item, results in the items' order."""

    where: dict[str, Any]  # what the version record says: type, address, workers
    ray: bool = False

    def map(
        self,
        fn: Callable[..., T],
        shared: Any,
        items: Sequence[tuple[Any, ...]],
        announce: Callable[[str], None] = lambda _: None,
        what: str = "fit",
        cpus: int = 1,
    ) -> list[T]:
        """`cpus`: the threads one call keeps busy (a Ray task asks that many, at most the
        cluster's: two 2-thread LightGBM fits on two CPUs ran 5x slower than one after the
        other, their OpenMP threads spinning against each other)."""
        if not self.ray:
            results = []
            for i, item in enumerate(items):
                announce(f"{what} {i + 1}/{len(items)}")
                results.append(fn(shared, *item))
            return results
        cpus = min(cpus, int(self.where.get("workers") or cpus))
        return _on_ray(fn, shared, items, announce, what, cpus)


LOCAL = Fits({"type": "local"})


@contextlib.contextmanager
def fit_executor(settings: TrainingSettings) -> Iterator[Fits]:
    """The executor of one training run (a Ray session for its length, when on Ray)."""
    if settings.executor == "local":
        yield LOCAL
        return
    ray = _import_ray()
    started_here = not ray.is_initialized()
    # ray.init makes SIGTERM exit the process; under Prefect that turned a cancelled flow run
    # into a crashed one. The handler in place before is put back after it and after shutdown.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if started_here:
        _start_or_join(ray, settings)
        _restore(on_sigterm)
        address = settings.ray_address or "started by the training run"
    else:
        address = "the Ray already running in this process"
    try:
        workers = int(ray.cluster_resources().get("CPU", 0))
        yield Fits({"type": "ray", "address": address, "workers": workers}, ray=True)
    finally:
        if started_here:
            ray.shutdown()
            _restore(on_sigterm)


def _start_or_join(ray: Any, settings: TrainingSettings) -> None:
    """A Ray of this process (`address="local"`: never one that RAY_ADDRESS or an earlier
    `ray start` names), or the cluster at ray_address; ConfigError saying why it failed."""
    try:
        if settings.ray_address is None:
            ray.init(
                address="local",
                num_cpus=settings.ray_workers,  # None: Ray counts the CPUs it may use
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=OBJECT_STORE_BYTES,
                configure_logging=False,
            )
        else:
            ray.init(address=settings.ray_address, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = settings.ray_address or "in this process"
        raise ConfigError(
            f"could not start or reach Ray ({where}): {exc}",
            "With training.ray_address: auto, start one first (`ray start --head`); a "
            "ray://host:10001 address must answer from here; or leave ray_address unset to "
            "start a Ray for the run, or set training.executor: local.",
        ) from exc


def _restore(handler: Any) -> None:
    if threading.current_thread() is threading.main_thread() and handler is not None:
        signal.signal(signal.SIGTERM, handler)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "training.executor is ray, but Ray is not installed.",
            "Install it (`pip install 'maquette[ray]'`, or `pip install ray`), or set "
            "training.executor: local.",
        ) from None
    return ray


def _on_ray(
    fn: Callable[..., T],
    shared: Any,
    items: Sequence[tuple[Any, ...]],
    announce: Callable[[str], None],
    what: str,
    cpus: int,
) -> list[T]:
    import ray

    shared_ref = ray.put(shared)
    remote = ray.remote(num_cpus=cpus, max_retries=1)(fn)
    pending = {remote.remote(shared_ref, *item): i for i, item in enumerate(items)}
    results: dict[int, T] = {}
    began = time.monotonic()
    waiting = list(pending)
    try:
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                results[pending[ref]] = ray.get(ref)
                announce(
                    f"{what} {len(results)}/{len(items)} done on Ray "
                    f"({time.monotonic() - began:.0f}s)"
                )
    except BaseException:
        for ref in waiting:  # one fit failed: the others stop too (a cluster is shared)
            ray.cancel(ref)
        raise
    return [results[i] for i in range(len(items))]
