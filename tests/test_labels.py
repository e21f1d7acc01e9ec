"""`labels.time_from`: a label's time matches the request row's field or the logged request time.

A small ratings case, hand-checked: predictions are logged through the real prediction log
(a real Redis Stream, drained to Parquet), labels come from the model's declared source.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from maquette.cli import app
from maquette.config import Settings, load_settings
from maquette.data import sources as datasets
from maquette.errors import ConfigError
from maquette.monitoring import labels
from maquette.serving import prediction_log as predictions

T10 = datetime(2024, 6, 1, 10, tzinfo=UTC)
T1030 = datetime(2024, 6, 1, 10, 30, tzinfo=UTC)
T11 = datetime(2024, 6, 1, 11, tzinfo=UTC)
T12 = datetime(2024, 6, 1, 12, tzinfo=UTC)


def _project(folder: Path, redis_url: str, time_from: str | None) -> Settings:
    declared: dict[str, Any] = {"join_keys": ["user_id", "item_id"], "time_column": "rated_at"}
    if time_from is not None:
        declared["time_from"] = time_from
    window = {"start": "2024-01-01", "end": "2024-02-01"}
    config = {
        "redis": {"url": redis_url},
        "predictions": {"stream": f"test-labels:{uuid.uuid4().hex}"},
        "dataset": {"entity_source": "ratings"},
        "models": {
            "rating": {
                "task": "regression",
                "label": "rating",
                "feature_service": "rating",
                "split": {"train": window, "validation": window, "test": window},
                "labels": declared,
            }
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "maquette.yaml").write_text(yaml.safe_dump(config))
    return load_settings(folder)


def _ratings(settings: Settings) -> None:
    """The loaded entity source: who rated which item, when, and how."""
    path = datasets.source_path(settings, "ratings")
    path.parent.mkdir(parents=True, exist_ok=True)
    timestamps = pa.timestamp("us", tz="UTC")
    table = pa.table(
        {
            "user_id": pa.array([1, 1, 2], pa.int64()),
            "item_id": pa.array([10, 10, 10], pa.int64()),
            "rated_at": pa.array([T10, T11, T10], timestamps),
            "rating": [4.0, 2.0, 5.0],
        }
    )
    pq.write_table(table, path)


def _log(settings: Settings, logged: list[tuple[str, int, dict[str, Any], datetime]]) -> None:
    """Log one prediction per (id, user, request fields, request time), then drain the log."""
    entries = [
        {
            "prediction_id": pid,
            "logged_at": when.isoformat(),
            "request_time": when.isoformat(),
            "model": "rating",
            "version": "v1",
            "partition": "__all__",
            "shadow": False,
            "prediction": 3.0,
            "decision": None,
            "latency_ms": 1.0,
            "entity": {"user_id": user, "item_id": 10},
            "request": request,
            "features": {},
            "missing": [],
            "stale": [],
        }
        for pid, user, request, when in logged
    ]
    predictions.PredictionLog(settings).append(entries)
    assert predictions.drain(settings).entries == len(entries)


# a: user 1 at 10:00, b: user 1 at 11:00, c: user 2 at 10:30 (no rating then), d: user 2 at
# 12:00 whose row says rated_at 10:00 (the time a row-matched label is looked up at).
LOGGED = [
    ("a", 1, {}, T10),
    ("b", 1, {}, T11),
    ("c", 2, {}, T1030),
    ("d", 2, {"rated_at": T10.isoformat()}, T12),
]


def _scored_labels(tmp_path: Path, running_redis: str, time_from: str | None) -> dict[str, Any]:
    settings = _project(tmp_path / "project", running_redis, time_from)
    _ratings(settings)
    _log(settings, LOGGED)
    assert labels.ingest_labels(settings, "rating").rows == 3
    scored = labels.join_labels(settings, "rating")
    return dict(zip(scored["prediction_id"].to_pylist(), scored["label"].to_pylist(), strict=True))


def test_labels_time_from_request_match_the_logged_request_time(
    tmp_path: Path, running_redis: str
) -> None:
    found = _scored_labels(tmp_path, running_redis, "request")
    # a and b meet the ratings at their request times; c has none at 10:30; d's own
    # rated_at field is not what counts: nothing was rated at its request time, 12:00.
    assert found == {"a": 4.0, "b": 2.0, "c": None, "d": None}


def test_labels_time_from_row_by_default_match_the_request_rows_time_field(
    tmp_path: Path, running_redis: str
) -> None:
    found = _scored_labels(tmp_path, running_redis, None)
    # Only d's row carries rated_at: its 10:00 rating, though it was predicted at 12:00.
    assert found == {"a": None, "b": None, "c": None, "d": 5.0}


def test_labels_time_from_defaults_to_row_and_accepts_only_row_or_request(tmp_path: Path) -> None:
    declared = _project(tmp_path / "default", "redis://127.0.0.1:1/0", None).models["rating"]
    assert declared.labels is not None and declared.labels.time_from == "row"
    with pytest.raises(ConfigError, match=r"rating\.labels\.time_from\s+Input should be 'row' or"):
        _project(tmp_path / "wrong", "redis://127.0.0.1:1/0", "arrival")


def test_labels_ingested_before_any_prediction_is_drained_are_kept_and_the_command_succeeds(
    tmp_path: Path, running_redis: str
) -> None:
    # Labels may arrive first (a backfill of outcomes, a new project): they are stored and
    # joined by the next monitoring run, not refused.
    settings = _project(tmp_path / "project", running_redis, None)
    _ratings(settings)
    result = CliRunner().invoke(
        app, ["labels", "ingest", "rating", "--project", str(settings.project_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "3 labels stored; no drained predictions to join yet" in result.output
    assert pq.read_table(labels.labels_path(settings, "rating")).num_rows == 3
