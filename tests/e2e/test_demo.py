"""The README's main job, end to end, in a fresh project folder (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, make_project


def _maquette(project: Path, env: dict[str, str], *args: str, timeout: int = 120) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "maquette", *args, "--project", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


@pytest.mark.slow
def test_quick_demo_runs_the_whole_lifecycle_from_a_fresh_project(
    tmp_path: Path, running_redis: str
) -> None:
    # Its own Redis database and ports: the platform it starts must not meet the other tests'.
    project = make_project(
        tmp_path / "fresh",
        running_redis.rsplit("/", 1)[0] + "/7",
        orchestration={"prefect_port": free_port(), "runner_port": free_port()},
        serving={"port": free_port()},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAQUETTE_")}
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")  # a fresh machine has an empty model store
    try:
        out = _maquette(project, env, "demo", "--quick", timeout=1200)
        for stage in (
            "start Redis and Prefect",
            "load offline store",
            "feast apply",
            "start deployments and stream processor",
            "materialize to Redis",
            "train flight_delay",
            "train late_arrival",
            "start prediction service",
            "replay 2013-12-01 to 2013-12-03",
            "drain prediction log",
            "monitor",
        ):
            assert stage in out, stage
        assert "336,776 rows" in out and "327,346 with a label" in out
        assert " 0 failed" in out and "events through the stream" in out
        assert "live accuracy per day" in out and "2013-12-01" in out and "2013-12-02" in out
        assert "drift flight_delay:v1" in out and "alerts raised" in out
        assert "where to look" in out and "evidently ui --workspace" in out
        state = project / ".maquette"
        assert (state / "reports" / "monitoring" / "index.html").is_file()
        for name in ("flight_delay", "late_arrival"):
            # The demo registered v1 of each model in its own store and promoted it.
            aliases = json.loads((state / "aliases.json").read_text())["aliases"]
            assert aliases[name]["production"] == "v1"
            record = json.loads(
                (tmp_path / "bentoml" / "models" / name / "v1" / "record.json").read_text()
            )
            assert record["baseline"]["beats_baseline"], record["baseline"]
        # flight_delay uses the streaming features the speed layer fed during the replay.
        names = json.loads(
            (tmp_path / "bentoml" / "models" / "flight_delay" / "v1" / "record.json").read_text()
        )["feature_names"]
        assert "origin_dep_delay_60m" in names and "carrier_dep_delay_60m" in names, names
        status = _maquette(project, env, "status")
        assert "running" in status
        shown = _maquette(project, env, "models", "show", "flight_delay@production")
        assert "partitions" in shown
    finally:
        subprocess.run(
            [sys.executable, "-m", "maquette", "down", "--project", str(project)],
            env=env,
            timeout=180,
            check=False,
            capture_output=True,
        )
