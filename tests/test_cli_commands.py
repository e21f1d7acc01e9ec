"""The commands end to end through the CLI: each error class as its exit code, message and
remedy; `train`, `predict-batch` and `serve` against the session's project."""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from maquette import errors, registry
from maquette.cli import app
from maquette.cli.render_platform import NOT_UP
from maquette.config import Settings, load_settings
from maquette.data import redis_server
from maquette.errors import (
    ComponentFailed,
    ConfigError,
    DataError,
    DataNotLoaded,
    FeatureNotFound,
    InvalidEntityFrame,
    InvalidModelSpec,
    MaquetteError,
    ModelVersionNotFound,
    StoreUnavailable,
)
from maquette.serving import batch
from tests.conftest import free_port, make_project
from tests.test_serving import ROW

runner = CliRunner()


def _words(text: str) -> str:
    """`text` with every run of whitespace as one space: the CLI wraps long lines to fit."""
    return " ".join(text.split())


def _no_platform() -> dict[str, str]:
    """Point the project at a Prefect port nothing listens on: commands then run in-process,
    whatever platform may be up on this machine."""
    return {"MAQUETTE_ORCHESTRATION_PREFECT_PORT": str(free_port())}


# --------------------------------------------------------------- errors as exit codes


@dataclass(frozen=True)
class Trigger:
    """A real command that raises `error`, and what the CLI must print and exit with."""

    error: type[MaquetteError]
    exit_code: int  # as README's CLI section documents it
    argv: tuple[str, ...]
    message: str
    remedy: str
    project: str = "fresh_project"  # or loaded_project: the session's, with data and Feast
    # Texts may name {project} and {held_port}: a loopback port held by something not Redis.
    env: tuple[tuple[str, str], ...] = ()
    afterwards: tuple[str, ...] = ()  # a command that cleans up what the trigger started


TRIGGERS = [
    Trigger(
        ConfigError,
        2,
        ("redis", "status"),
        "invalid settings in",
        "Fix the named field (README 'Settings' lists every field).",
        env=(("MAQUETTE_REDIS_PORT", "not-a-port"),),
    ),
    Trigger(
        InvalidModelSpec,
        2,
        ("train", "broken_search", "--plain"),
        "search space for 'learning_rate' does not parse: 'bogus(1, 2)'.",
        "Use uniform(a, b), loguniform(a, b), int(a, b) or choice(x, y, ...).",
    ),
    Trigger(
        StoreUnavailable,
        3,
        ("redis", "start"),
        "Redis at redis://127.0.0.1:{held_port}/0 (MAQUETTE_REDIS_URL / redis.url) does not answer.",
        "Start that server, or unset redis.url so Maquette starts its own.",
        env=(("MAQUETTE_REDIS_URL", "redis://127.0.0.1:{held_port}/0"),),
    ),
    Trigger(
        DataNotLoaded,
        4,
        ("features", "list"),
        "the Feast registry {project}/.maquette/feast/registry.db does not exist.",
        "Run `maquette features apply` (or `feast apply` in feature_repo/).",
    ),
    Trigger(
        FeatureNotFound,
        5,
        ("features", "get", "origin=JFK", "--service", "nope"),
        "unknown feature service 'nope'.",
        "Known feature services: flight_delay.",
        project="loaded_project",
    ),
    Trigger(
        InvalidEntityFrame,
        6,
        ("features", "get", "origin=JFK", "scheduled_departure=yesterday"),
        "scheduled_departure is 'yesterday', not an ISO time.",
        "Send e.g. 2024-06-01T14:05:00Z.",
        project="loaded_project",  # a field is a time because the repo declares it one
    ),
    Trigger(
        ModelVersionNotFound,
        7,
        ("models", "show", "nope"),
        "no model named 'nope' is registered.",
        "train one with `maquette train nope`.",
    ),
    Trigger(
        DataError,
        2,
        ("stream", "publish", "{project}/flows/__init__.py"),  # one line of Python, not JSON
        "1 line is not an event of this stream and was not published: line 1: not JSON",
        "Fix those lines and publish them again (0 other events were published)",
    ),
    Trigger(
        ComponentFailed,
        8,
        ("up", "--component", "redis"),
        "redis could not be started: port {held_port} is taken by another program",
        "to a free port, then run `maquette up` again",
        env=(("MAQUETTE_REDIS_PORT", "{held_port}"),),
        afterwards=("down",),
    ),
]


def test_every_error_class_has_a_trigger() -> None:
    classes = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, MaquetteError) and cls is not MaquetteError  # the base: never raised
    }
    assert classes == {t.error for t in TRIGGERS}


@pytest.fixture(scope="module")
def fresh_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project with nothing loaded, its own ports, and a model whose search cannot parse;
    the Redis a command starts for it (as for any user) is stopped after the module."""
    folder = make_project(
        tmp_path_factory.mktemp("fresh"),
        None,
        redis={"port": free_port()},
        orchestration={
            "prefect_port": free_port(),
            "runner_port": free_port(),
            "settle_s": 1,
            "start_retries": 0,
        },
    )
    config = yaml.safe_load((folder / "maquette.yaml").read_text())
    broken = {**config["models"]["late_arrival"]}
    broken["search"] = {"trials": 1, "space": {"learning_rate": "bogus(1, 2)"}}
    config["models"]["broken_search"] = broken
    (folder / "maquette.yaml").write_text(yaml.safe_dump(config))
    yield folder
    redis_server.stop(load_settings(folder))


@pytest.fixture(scope="module")
def held_port() -> Iterator[int]:
    """A loopback port on which something that is not Redis listens (and never answers)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: t.error.__name__)
def test_each_error_class_exits_with_its_code_message_and_remedy(
    trigger: Trigger, held_port: int, request: pytest.FixtureRequest
) -> None:
    found = request.getfixturevalue(trigger.project)
    project = found.project_dir if isinstance(found, Settings) else found
    names = {"project": project, "held_port": held_port}
    env = {k: v.format(**names) for k, v in trigger.env}
    argv = [*(a.format(**names) for a in trigger.argv), "--project", str(project)]
    try:
        result = runner.invoke(app, argv, env=env)
    finally:
        if trigger.afterwards:
            runner.invoke(app, [*trigger.afterwards, "--project", str(project)], env=env)
    assert result.exit_code == trigger.exit_code == trigger.error.exit_code, result.output
    # The CLI prints "error: MESSAGE", then the remedy on a line of its own: "  -> REMEDY".
    message, arrow, remedy = result.output.partition("\n  -> ")
    assert arrow, f"no remedy line in:\n{result.output}"
    assert f"error: {trigger.message.format(**names)}" in _words(message)
    assert trigger.remedy in _words(remedy), result.output


# ---------------------------------------------------------- train, predict-batch, serve


@pytest.fixture
def production_aliases(production: dict[str, str], loaded_project: Settings) -> dict[str, str]:
    """The session's trained versions at @production (other tests move the alias)."""
    for tag in production.values():
        registry.promote(loaded_project, tag, "production")
    return production


@pytest.mark.slow
def test_train_command_registers_a_new_version_with_one_trial(loaded_project: Settings) -> None:
    expected = registry.next_version(loaded_project, "late_arrival")
    result = runner.invoke(
        app,
        ["train", "late_arrival", "--trials", "1", "--project", str(loaded_project.project_dir)],
        env=_no_platform(),
    )
    assert result.exit_code == 0, result.output
    assert f"registered late_arrival:{expected}" in result.output
    assert _words(NOT_UP) in _words(result.output)  # it ran in-process, and says so
    version = registry.resolve(loaded_project, f"late_arrival:{expected}")
    assert len(version.record.search.trials) == 1
    assert version.record.metrics.test.model["auc"] > 0.5
    assert Path(version.report).is_file()


def test_predict_batch_command_writes_every_entity_scored_to_parquet(
    production_aliases: dict[str, str], loaded_project: Settings, tmp_path: Path
) -> None:
    query = "SELECT * FROM flights WHERE event_timestamp >= '2013-12-30'"
    output = tmp_path / "scores.parquet"
    result = runner.invoke(
        app,
        [
            "predict-batch",
            query,
            "--model",
            "late_arrival@production",
            "--output",
            str(output),
            "--project",
            str(loaded_project.project_dir),
        ],
        env=_no_platform(),
    )
    assert result.exit_code == 0, result.output
    entities = batch.entity_table(loaded_project, query).num_rows
    scores = pq.read_table(output)
    assert scores.num_rows == entities > 0
    tag = production_aliases["late_arrival"]
    assert f"{tag}: {entities:,} rows" in result.output
    assert set(scores.column("model_version").to_pylist()) == {tag}
    prediction = scores.column("prediction")
    assert prediction.null_count == 0
    assert 0 <= pc.min(prediction).as_py() <= pc.max(prediction).as_py() <= 1


def _status(url: str) -> int | None:
    """The HTTP status of GET `url`, or None when nothing answers there."""
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def _wait_for(condition: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{log.read_text()}"
        time.sleep(0.2)


@pytest.mark.slow
def test_serve_command_answers_predictions_and_stops_with_its_server(
    production_aliases: dict[str, str], loaded_project: Settings, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "maquette", "serve", "--port", str(port), "--project"]
    with log.open("w") as out:
        serve = subprocess.Popen(
            [*command, str(loaded_project.project_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the cleanup below reaches all of it
        )
    try:
        _wait_for(lambda: _status(f"{url}/readyz") == 200, 180, f"200 from {url}/readyz", log)
        reply = httpx.post(
            f"{url}/predict", json={"rows": ROW, "model": "late_arrival"}, timeout=10
        )
        assert reply.status_code == 200, reply.text
        (answer,) = reply.json()["predictions"]
        assert answer["model"] == production_aliases["late_arrival"]
        assert 0 <= answer["prediction"] <= 1
        # `kill PID` of `maquette serve` (not of its group) stops the server it started too.
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        _wait_for(lambda: _status(f"{url}/healthz") is None, 30, f"stop of {url}", log)
    finally:
        _stop_group(serve)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (bentoml then stops its workers), SIGKILL to what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            process.poll()  # reaps the leader once it exits: a zombie still counts in its group
            os.killpg(process.pid, 0)  # raises once no process of the group is left
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
