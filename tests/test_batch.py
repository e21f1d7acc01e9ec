"""Batch predictions: the default entities, outputs named by the data's time range, deployments."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maquette.config import Settings, load_settings
from maquette.errors import InvalidEntityFrame
from maquette.serving import batch
from tests.conftest import make_project

CHICAGO_SUMMER = timezone(timedelta(hours=-5))


def test_batch_output_is_named_by_the_utc_dates_of_its_first_and_last_entity() -> None:
    times = [
        datetime(2024, 6, 5, 12, tzinfo=UTC),
        datetime(2024, 6, 1, 23, 30, tzinfo=CHICAGO_SUMMER),  # 2024-06-02 04:30 UTC: the first
        None,
        datetime(2024, 6, 7, 0, 0, tzinfo=UTC),  # the last, at midnight: its own date
    ]
    table = pa.table({"event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC"))})
    assert batch.time_range_name(table, "event_timestamp") == "2024-06-02_2024-06-07.parquet"
    naive = pa.table({"at": pa.array([datetime(2024, 1, 31, 23, 59)], pa.timestamp("us"))})
    assert batch.time_range_name(naive, "at") == "2024-01-31_2024-01-31.parquet"


def test_batch_output_without_entity_times_says_what_to_pass() -> None:
    with pytest.raises(InvalidEntityFrame, match="no column 'event_timestamp'"):
        batch.time_range_name(pa.table({"user_id": [1]}), "event_timestamp")
    empty = pa.table({"event_timestamp": pa.array([None], pa.timestamp("us", tz="UTC"))})
    with pytest.raises(InvalidEntityFrame, match="no entity row has a time"):
        batch.time_range_name(empty, "event_timestamp")


def test_batch_predict_deployments_default_to_each_models_entity_source(
    tmp_path: Path,
) -> None:
    from maquette.platform.deployments import flow_deployments

    folder = make_project(tmp_path / "project", None, orchestration={"batch_entities": None})
    settings = load_settings(folder)
    built = {f"{d.flow_name}/{d.name}": d for d in flow_deployments(settings)}
    for model in settings.models:
        # Only the model: its entities (here every row of the model's entity source) and the
        # output folder come from settings, never from whoever can create a flow run.
        assert built[f"batch_predict/{model}"].parameters == {"model": f"{model}@production"}

    # A model with no entity source anywhere has nothing to score: no deployment, a warning.
    settings.dataset.entity_source = None
    # Heard on the logger itself: neither capfd (a Prefect handler left holding pytest's
    # captured stderr breaks every later test that logs through Prefect) nor caplog (Prefect's
    # logging setup keeps records from the root logger).
    said: list[str] = []
    hears = logging.Handler(logging.WARNING)
    hears.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("maquette.deployments")
    logger.addHandler(hears)
    try:
        names = [f"{d.flow_name}/{d.name}" for d in flow_deployments(settings)]
    finally:
        logger.removeHandler(hears)
    assert names and not [n for n in names if n.startswith("batch_predict/")]
    assert any("no entity source and orchestration.batch_entities is not set" in s for s in said)


@pytest.mark.slow
def test_batch_predict_without_entities_scores_every_entity_source_row_into_its_time_range(
    production: dict[str, str], loaded_project: Settings, tmp_path: Path
) -> None:
    result = batch.predict_batch(
        loaded_project, None, "late_arrival@production", output_dir=tmp_path
    )
    source = batch.model_entities(loaded_project, "late_arrival")
    ((rows, first, last),) = duckdb.sql(
        "SELECT count(*), min(event_timestamp AT TIME ZONE 'UTC')::DATE, "
        f"max(event_timestamp AT TIME ZONE 'UTC')::DATE FROM read_parquet('{source}')"
    ).fetchall()
    assert result.path == tmp_path / f"{first}_{last}.parquet"
    scored = pq.read_table(result.path, columns=["model_version"])
    assert result.rows == scored.num_rows == rows
    assert set(scored["model_version"].to_pylist()) == {production["late_arrival"]}


def test_batch_predict_with_no_entities_to_score_writes_no_file(
    production: dict[str, str], loaded_project: Settings, tmp_path: Path
) -> None:
    # A scheduled run whose entity query matches nothing today is not an error: nothing to name.
    source = batch.model_entities(loaded_project, "late_arrival")
    nothing = f"SELECT * FROM read_parquet('{source}') WHERE false"
    result = batch.predict_batch(
        loaded_project, nothing, "late_arrival@production", output_dir=tmp_path
    )
    assert (result.rows, result.path) == (0, None)
    assert list(tmp_path.iterdir()) == []


def test_batch_in_chunks_scores_each_row_as_the_pandas_path_does(
    production: dict[str, str], loaded_project: Settings, tmp_path: Path
) -> None:
    from maquette import registry
    from maquette.training.model_types import PARENT, TrainedModel

    query = "SELECT * FROM flights WHERE event_timestamp >= '2013-12-24'"
    selector = "flight_delay@production"
    whole = batch.predict_batch(loaded_project, query, selector).table
    assert whole is not None and whole.num_rows > 3_000
    chunked_settings = loaded_project.model_copy(deep=True)
    chunked_settings.serving.batch_chunk_rows = 997
    out = tmp_path / "scores.parquet"
    chunks: list[int] = []
    result = batch.predict_batch(chunked_settings, query, selector, out, progress=chunks.append)
    assert (result.table, result.path, result.rows) == (None, out, whole.num_rows)
    assert len(chunks) > 3 and chunks[-1] == whole.num_rows
    assert pq.read_table(out).to_pydict() == whole.to_pydict()
    assert list(tmp_path.iterdir()) == [out]  # nothing partial left beside it

    # The Arrow path equals the pandas one, also for categories never seen in training and
    # missing values, and rows of every partition model ran that model.
    version = registry.resolve(loaded_project, selector)
    model = TrainedModel.load(version.path, version.record)
    category = next(iter(model.categories))
    values = whole[category].to_pylist()
    values[::5] = ["never seen in training"] * len(values[::5])
    values[1::5] = [None] * len(values[1::5])
    frame = whole.set_column(whole.schema.get_field_index(category), category, pa.array(values))
    arrow_scores, arrow_used = model.predict_table(frame)
    pandas_scores, pandas_used = model.predict(frame.to_pandas())
    assert arrow_scores.tolist() == pandas_scores.tolist()
    assert arrow_used.tolist() == pandas_used
    assert set(whole["partition"].to_pylist()) == {PARENT, *model.partitions}


def test_a_batch_run_that_fails_midway_leaves_no_file(
    production: dict[str, str], loaded_project: Settings, tmp_path: Path
) -> None:
    chunked = loaded_project.model_copy(deep=True)
    chunked.serving.batch_chunk_rows = 500
    query = "SELECT * FROM flights WHERE event_timestamp >= '2013-12-30'"

    def stop(rows: int) -> None:
        raise KeyboardInterrupt  # a user's Ctrl-C after the first chunk is written

    with pytest.raises(KeyboardInterrupt):
        batch.predict_batch(
            chunked, query, "late_arrival@production", output_dir=tmp_path, progress=stop
        )
    assert list(tmp_path.iterdir()) == []


def test_a_scheduled_run_over_an_empty_csv_writes_nothing_and_does_not_fail(
    production: dict[str, str], loaded_project: Settings, tmp_path: Path
) -> None:
    # A header-only CSV reads as text columns: nothing to score, so nothing to check either.
    entities = tmp_path / "none_today.csv"
    entities.write_text("origin,carrier,tailnum,route,event_timestamp\n")
    out = tmp_path / "out"
    result = batch.predict_batch(
        loaded_project, entities, "late_arrival@production", output_dir=out
    )
    assert (result.rows, result.path) == (0, None)
    assert list(out.iterdir()) == []


def test_partial_outputs_of_killed_runs_are_removed_and_a_live_runs_kept(tmp_path: Path) -> None:
    import os

    abandoned = tmp_path / ".scoring-999999999-0badc0de.partial"  # no such process
    running = tmp_path / f".scoring-{os.getpid()}-1234abcd.partial"
    scores = tmp_path / "2013-12-01_2013-12-31.parquet"
    for path in (abandoned, running, scores):
        path.write_bytes(b"x")
    batch._remove_abandoned(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, scores.name])
