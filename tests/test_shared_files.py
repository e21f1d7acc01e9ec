"""Locks and whole-file writes shared by processes: drains, monitoring passes, registrations."""

from __future__ import annotations

import multiprocessing
import stat
import threading
import time
from pathlib import Path

import pytest

from maquette.config import load_settings
from maquette.data.shared_files import exclusive, lock_path, replace_whole
from maquette.errors import MaquetteError
from maquette.monitoring import monitor


def _hold(path: str, seconds: float, ready: object) -> None:
    with exclusive(Path(path)):
        ready.set()  # type: ignore[attr-defined]
        time.sleep(seconds)


def test_a_lock_held_by_another_process_waits_or_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(path), 3.0, ready))
    holder.start()
    try:
        assert ready.wait(30)
        with exclusive(path, wait_s=0.3) as got:
            assert got is False  # held elsewhere: given up after 0.3 s
        began = time.monotonic()
        with exclusive(path) as got:  # waits for the holder to finish
            assert got is True and time.monotonic() - began > 0.5
    finally:
        holder.join(30)


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(path), 60.0, ready))
    holder.start()
    assert ready.wait(30)
    holder.kill()
    holder.join(30)
    with exclusive(path, wait_s=5) as got:
        assert got is True


def test_replace_whole_leaves_old_or_new_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "reports.json"
    replace_whole(path, '{"a": 1}')
    replace_whole(path, '{"a": 2}')
    assert path.read_text() == '{"a": 2}' and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["reports.json"]  # no temp file left


def test_a_monitoring_pass_waits_for_the_one_running(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    done = threading.Event()
    failed: list[BaseException] = []

    def second_pass() -> None:
        try:
            monitor.run(settings, drain=False, announce=lambda _: None)
        except MaquetteError as exc:  # nothing logged in this empty project: after the lock
            failed.append(exc)
        finally:
            done.set()

    with exclusive(lock_path(settings, "monitoring-pass")):
        thread = threading.Thread(target=second_pass, daemon=True)
        thread.start()
        assert not done.wait(1.5)  # still waiting for the pass that holds the lock
    assert done.wait(60) and failed, "the pass ran once the lock was free"
    thread.join(5)


@pytest.mark.parametrize("name", ["register-flight_delay", "prediction-log-drain"])
def test_lock_files_live_in_the_state_folder(tmp_path: Path, name: str) -> None:
    settings = load_settings(tmp_path)
    assert lock_path(settings, name) == settings.state_dir / "locks" / f"{name}.lock"
