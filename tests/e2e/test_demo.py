"""The README's main job, end to end, in a fresh project folder (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_project


@pytest.mark.slow
def test_demo_runs_every_stage_from_a_fresh_project(tmp_path: Path, running_redis: str) -> None:
    project = make_project(tmp_path / "fresh", running_redis)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAQUETTE_")}
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")  # a fresh machine has an empty model store
    result = subprocess.run(
        [sys.executable, "-m", "maquette", "demo", "--project", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for stage in (
        "load offline store",
        "feast apply",
        "materialize to Redis",
        "build training frame",
    ):
        assert stage in out
    assert "336,776 rows" in out and "327,346 with a label" in out
    assert (project / ".maquette" / "offline" / "route_daily.parquet").is_file()
    assert "train flight_delay" in out and "train late_arrival" in out
    import json

    for name in ("flight_delay", "late_arrival"):
        # The demo registered v1 of each model in its own store and promoted it.
        aliases = json.loads((project / ".maquette" / "aliases.json").read_text())["aliases"]
        assert aliases[name]["production"] == "v1"
        record = json.loads(
            (tmp_path / "bentoml" / "models" / name / "v1" / "record.json").read_text()
        )
        assert record["baseline"]["beats_baseline"], record["baseline"]
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "maquette",
            "models",
            "show",
            "flight_delay@production",
            "--project",
            str(project),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert shown.returncode == 0 and "partitions" in shown.stdout
