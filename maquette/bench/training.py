"""Training benchmark (`maquette bench training`): the project's `train` flow on a running
Prefect server next to the same steps as plain calls, on a scratch model store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from maquette.bench.harness import bench_dir
from maquette.config import Settings, load_settings
from maquette.platform.flows import project_flow, project_of_flows
from maquette.training import pipeline as training


def _scratch_project(settings: Settings, folder: Path) -> Path:
    """A project file with the same settings (absolute paths) but its own model store."""
    # Credentials stay out (dumped, they are "**********"): read from the environment as usual.
    left_out: dict[str, Any] = {
        "project_dir": True,
        "redis": {"password"},
        "serving": {"api_key"},
        "orchestration": {"prefect_auth"},
    }
    data = settings.model_dump(mode="json", exclude=left_out)
    data["paths"] = {k: str(settings.path(Path(v))) for k, v in data["paths"].items()}
    data["feast"]["registry"] = str(settings.registry_path)
    data["dataset"]["sources"] = {
        k: str(settings.path(Path(v))) for k, v in data["dataset"]["sources"].items()
    }
    if data["dataset"]["feature_sql"]:
        data["dataset"]["feature_sql"] = str(settings.path(Path(data["dataset"]["feature_sql"])))
    # Benchmark versions go to a scratch model store and alias table, never the real ones.
    data["registry"] = {
        "bentoml_home": str(folder / "bentoml"),
        "aliases": str(folder / "aliases.json"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "maquette.yaml").write_text(yaml.safe_dump(data))
    return folder


def _best_times(
    settings: Settings, scratch: Settings, folder: Path, name: str, trials: int, console: Console
) -> tuple[float, float, float]:
    """(plain, flow, server start-up) seconds: best of two rounds, alternating the two ways."""
    # Imported here: Prefect takes seconds to import.
    from prefect.testing.utilities import prefect_test_harness

    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        startup = time.perf_counter() - started
        flow = project_flow(settings, "train")
        plain = flowed = float("inf")
        for round_ in range(2):
            began = time.perf_counter()
            training.train(scratch, name, trials)
            plain = min(plain, time.perf_counter() - began)
            began = time.perf_counter()
            with project_of_flows(scratch):  # the flow reads the scratch project's settings
                flow(name, trials)
            flowed = min(flowed, time.perf_counter() - began)
            console.print(
                f"  round {round_ + 1}: plain {plain:.1f} s, flow {flowed:.1f} s (best so far)"
            )
    return plain, flowed, startup


def run_training_benchmark(settings: Settings, name: str, trials: int, console: Console) -> str:
    """The `train` flow on a running Prefect server next to the same steps as plain calls."""
    folder = _scratch_project(settings, bench_dir(settings) / "training")
    scratch = load_settings(folder)
    console.print(
        f"[bold]training benchmark[/]: {name}, {trials} trials, best of 2 each, alternating"
    )
    training.train(scratch, name, 1)  # warm-up (imports, caches), not timed
    plain, flowed, startup = _best_times(settings, scratch, folder, name, trials, console)
    overhead = 100 * (flowed - plain) / plain
    table = Table("case", "seconds", title="train: Prefect flow vs plain calls")
    for label, value in (
        ("plain calls", plain),
        ("Prefect flow (server already up)", flowed),
        ("Prefect server start (once per platform)", startup),
    ):
        table.add_row(label, f"{value:.1f}")
    table.add_row("[bold]flow overhead[/]", f"{overhead:+.1f}%")
    console.print(table)
    return f"| {name}, {trials} trials | {plain:.1f} s | {flowed:.1f} s | {overhead:+.1f}% | {startup:.1f} s |\n"
