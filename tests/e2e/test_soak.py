"""The platform left to itself for two minutes under traffic, Redis and the stream processor
killed once each: the drain's schedule fires, the supervisor brings both back, and every
acknowledged prediction is in the Parquet log exactly once (slow)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maquette.bench.soak import run_soak
from maquette.config import Settings, load_settings
from tests.conftest import free_port, make_project

pytestmark = pytest.mark.slow

# Only the drain on a schedule (every minute): nothing else competes for the two cores.
SCHEDULES = {"materialize": None, "drain": "* * * * *", "monitor": None}
QUIET = {"batch_predict": None, "train": None}


def _soak_project(folder: Path, loaded_project: Settings) -> Settings:
    """A project of its own (embedded Redis, ports, Feast registry, offline store copied from
    the loaded one) serving the session's @production models.

    Its Redis runs with `appendfsync always`: with everysec, while a background fsync is slow
    Redis holds back the AOF write yet still answers, so a SIGKILL in that window loses
    acknowledged entries (README, "What survives a crash"; seen once in CI: 2 of 1188)."""
    make_project(
        folder,
        None,
        redis={"port": free_port(), "appendfsync": "always"},
        serving={"port": free_port()},
        registry={"aliases": str(loaded_project.path(loaded_project.registry.aliases))},
        orchestration={
            "prefect_port": free_port(),
            "runner_port": free_port(),
            "schedules": {**SCHEDULES, **QUIET},
        },
        stream={"commit_interval_s": 1.0},
    )
    settings = load_settings(folder)
    # A copy: the stream processor writes its offline rows there, the session's stay as they are.
    shutil.copytree(loaded_project.offline_store, settings.offline_store)
    # In a process of its own: the feature repo's modules, once imported, keep the paths of
    # the first project that imported them (the session's loaded project).
    apply = [sys.executable, "-m", "maquette", "features", "apply", "--project", str(folder)]
    subprocess.run(apply, check=True, capture_output=True)
    return settings


def test_a_soak_with_redis_and_the_processor_killed_loses_and_doubles_nothing(
    tmp_path: Path, production: dict[str, str], loaded_project: Settings
) -> None:
    settings = _soak_project(tmp_path / "p", loaded_project)

    result = run_soak(settings, minutes=2, clients=2, rate=10, events_per_s=20, schedules=SCHEDULES)

    print(result)
    (drain,) = result.runs_of("drain")
    assert drain.completed >= 1, result.runs
    for name in ("redis", "stream"):
        assert result.restarts[name] >= 1 and result.states[name] == "running", result.states
    assert result.answers["200"] > 0 and result.acknowledged > 0, result.answers
    assert result.events_applied > 0, result  # the stream reached the processor
    assert result.undrained == 0
    assert (result.lost, result.duplicated) == (0, 0), result
