"""Crash points, in real processes: unset nothing happens; `name:N` dies by SIGKILL the Nth time
that point is reached; other points are passed by."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from maquette.faults import CRASH_AT
from tests.conftest import ROOT

# Reaches `a` three times, then `b` once; says so on stdout (flushed: a SIGKILL flushes nothing).
PROGRAM = """
from maquette.faults import crash_point
for n in (1, 2, 3):
    crash_point("a")
    print(f"passed a {n}", flush=True)
crash_point("b")
print("passed b", flush=True)
"""
EVERY_LINE = ["passed a 1", "passed a 2", "passed a 3", "passed b"]


def _run(crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_AT}
    if crash_at is not None:
        env[CRASH_AT] = crash_at
    return subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("crash_at", [None, "", "c", "a:4", "aa", "b:2"])
def test_crash_point_unset_or_naming_another_point_or_count_changes_nothing(
    crash_at: str | None,
) -> None:
    done = _run(crash_at)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.splitlines() == EVERY_LINE


@pytest.mark.parametrize(
    ("crash_at", "survived", "line"),
    [
        ("a", 0, "maquette: crash point a reached (1): SIGKILL"),
        ("a:1", 0, "maquette: crash point a reached (1): SIGKILL"),
        ("a:3", 2, "maquette: crash point a reached (3): SIGKILL"),
        ("b", 3, "maquette: crash point b reached (1): SIGKILL"),
    ],
)
def test_crash_point_named_dies_by_sigkill_the_nth_time_it_is_reached(
    crash_at: str, survived: int, line: str
) -> None:
    done = _run(crash_at)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)
    assert done.stdout.splitlines() == EVERY_LINE[:survived]
    assert done.stderr.splitlines() == [line]
