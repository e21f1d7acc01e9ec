"""Crash points: named places where a test can make a process die, deterministically.

Recovery promises ("a drain killed between writing a file and acknowledging it loses and
doubles nothing", "a stream processor killed inside a commit resumes exactly") are proven only
if the kill lands at that place. A kill after a random sleep almost never does: a drain lasts
a fifth of a second. So the code marks those places with `crash_point("drain.written")`, and a
test starts the process with `MAQUETTE_CRASH_AT=drain.written` (or `drain.written:3`, to die
the third time the point is reached). There the process kills itself with SIGKILL: no
`finally`, no atexit, nothing flushed, as the OOM killer or a power cut would leave it.

Unset (always, outside tests) a point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import sys

CRASH_AT = "MAQUETTE_CRASH_AT"
_reached: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here with SIGKILL if MAQUETTE_CRASH_AT names this point (and this is the Nth time)."""
    wanted = os.environ.get(CRASH_AT)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] < int(nth or 1):
        return
    # One line on stderr first, so the test can tell its kill landed here and not elsewhere.
    sys.stderr.write(f"maquette: crash point {name} reached ({_reached[name]}): SIGKILL\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
