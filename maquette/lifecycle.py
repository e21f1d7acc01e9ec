"""The main job: every lifecycle stage that exists so far, in order, each timed.

Stages: start Redis -> load the dataset into the offline store -> `feast apply` -> materialize to
Redis -> build a training frame -> read a sample online -> train, register and promote every
declared model. Later stages (serving, monitoring) append here. The CLI renders progress and
chooses how training runs (the Prefect flow); this module only does the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from maquette import datasets
from maquette.config import Settings
from maquette.features import FeatureLayer, MaterializeResult, OnlineFeatures
from maquette.redis_server import ensure_redis

Progress = Callable[[str, int, int], None]
# (settings, model name, trials or None) -> registered "NAME:VERSION"
Trainer = Callable[[Settings, str, int | None], str]


def train_plain(settings: Settings, name: str, trials: int | None) -> str:
    from maquette import training

    return str(training.train(settings, name, trials).tag)


@dataclass
class DemoReport:
    """What the main job did, for the closing summary."""

    redis_url: str = ""
    tables: list[datasets.TableSummary] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    materialized: MaterializeResult | None = None
    training_rows: int = 0
    training_columns: list[str] = field(default_factory=list)
    label_rows: int = 0
    online_sample: OnlineFeatures | None = None
    online_entity: dict[str, Any] = field(default_factory=dict)
    models: list[Any] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def _stage(report: DemoReport, name: str, announce: Callable[[str], None]) -> Iterator[None]:
    announce(name)
    began = time.perf_counter()
    yield
    report.stage_seconds[name] = time.perf_counter() - began


def entity_frame(settings: Settings, limit: int | None = None) -> pa.Table:
    """Entity and label rows of the dataset's entity source (newest last)."""
    path = datasets.require_loaded(settings, settings.dataset.entity_source)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    sql = "SELECT * FROM read_parquet($path) ORDER BY event_timestamp"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return con.sql(sql, params={"path": str(path)}).to_arrow_table()


def run_demo(
    settings: Settings,
    announce: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
    quick: bool = False,
    trainer: Trainer = train_plain,
) -> DemoReport:
    """Run the lifecycle end to end on the configured dataset (`quick`: one trial per model)."""
    report = DemoReport()
    layer = FeatureLayer(settings)
    with _stage(report, "start Redis", announce):
        report.redis_url = ensure_redis(settings)
    with _stage(report, "load offline store", announce):
        report.tables = datasets.load_dataset(settings, announce)
    with _stage(report, "feast apply", announce):
        report.registered = layer.apply()
    with _stage(report, "materialize to Redis", announce):
        last = max(t.last_event for t in report.tables if t.kind == "feature" and t.last_event)
        report.materialized = layer.materialize(
            datetime(1970, 1, 1, tzinfo=UTC), last, progress=progress
        )
    with _stage(report, "build training frame", announce):
        entities = entity_frame(settings)
        frame = layer.training_frame(entities)
        report.training_rows, report.training_columns = frame.num_rows, frame.column_names
        if "arr_delay" in entities.column_names:
            report.label_rows = entities.num_rows - entities["arr_delay"].null_count
    with _stage(report, "read online features", announce):
        row = {k: v[0] for k, v in entities.slice(entities.num_rows - 1, 1).to_pydict().items()}
        report.online_entity = row
        report.online_sample = layer.online_features([row], as_of=row["event_timestamp"])
    from maquette import registry

    for name in settings.models:
        with _stage(report, f"train {name}", announce):
            tag = trainer(settings, name, 1 if quick else None)
            registry.promote(settings, tag, "production")
            report.models.append(registry.resolve(settings, tag))
    return report
