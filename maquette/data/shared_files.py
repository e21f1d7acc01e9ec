"""Files several processes share: exclusive locks and whole-file replacement.

A drain, a monitoring pass, a training run registering its version: each may run twice at once
(a schedule and a user, two replicas of a flow). Each holds an `flock` on a file in
`<state>/locks/` while it works; the kernel releases it when the holder exits, killed or not,
so a crashed run never blocks the next. What they write is replaced whole (temp file, fsync,
rename): a reader, or a run killed mid-write, never leaves half a JSON file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from maquette.config import Settings

LOCKS_DIR = "locks"


def private_state(settings: Settings) -> Path:
    """The state folder, created if missing, readable by this user only: it holds the
    prediction log, Redis's AOF and Feast's registry.db (which Feast unpickles with dill), so
    whatever modes the files inside have, nobody else reaches them."""
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    if state.stat().st_mode & 0o077:
        os.chmod(state, 0o700)
    return state


def lock_path(settings: Settings, name: str) -> Path:
    """`<state>/locks/<name>.lock` (the state folder made private first)."""
    return private_state(settings) / LOCKS_DIR / f"{name}.lock"


@contextlib.contextmanager
def exclusive(path: Path, wait_s: float | None = None) -> Iterator[bool]:
    """Hold the lock at `path` (True), waiting up to `wait_s` seconds (None: as long as it
    takes); yields False when another holder kept it longer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if wait_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def replace_whole(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to `path` at once: a temp file of this process beside it, fsynced, renamed
    over `path`. Readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp name of its own (another thread of this process may write the same file).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
