"""Labels arrive after predictions: ingest, join, live metrics per day (real Redis, real log)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maquette.config import Settings
from maquette.errors import ConfigError, DataNotLoaded, InvalidEntityFrame
from maquette.monitoring import labels
from maquette.monitoring.live_metrics import live_metrics, metrics_path
from maquette.platform.demo import entity_frame
from maquette.serving import prediction_log as predictions
from maquette.serving.predictor import Predictor

KEYS = ["origin", "carrier", "tailnum", "route", "scheduled_departure"]


@pytest.fixture(scope="module")
def served_december(production, loaded_project: Settings) -> tuple[Settings, list[str]]:
    """Two December days of flights predicted as of their departure, logged and drained."""
    settings = loaded_project.model_copy(deep=True)
    settings.predictions.stream = "maquette:monitoring-test"
    settings.predictions.folder = Path(
        str(loaded_project.path(loaded_project.predictions.folder)) + "-monitoring"
    )
    flights = entity_frame(settings).to_pandas()
    days = flights[
        (flights.event_timestamp >= "2013-12-02") & (flights.event_timestamp < "2013-12-04")
    ]
    days = days.dropna(subset=KEYS).sample(300, random_state=1).sort_values("event_timestamp")
    predictor = Predictor(settings)
    ids = []
    for row in days[KEYS].to_dict("records"):
        (answer,) = predictor.predict(
            [row], "flight_delay@production", as_of=row["scheduled_departure"]
        )
        ids.append(answer.prediction_id)
    predictions.drain(settings)
    return settings, ids


def test_labels_join_every_prediction_with_its_flights_outcome(served_december) -> None:
    settings, ids = served_december
    ingested = labels.ingest_labels(settings, "flight_delay")
    assert ingested.rows > 300_000
    scored = labels.join_labels(settings, "flight_delay")
    assert set(scored["prediction_id"].to_pylist()) == set(ids)
    known = scored.filter(pa.compute.is_valid(scored["label"]))
    assert known.num_rows >= 290  # cancelled or diverted flights have no label
    assert min(known["label_delay_s"].to_pylist()) > 0  # a label is known only after the prediction


def test_daily_metrics_match_a_hand_computation(served_december) -> None:
    settings, _ = served_december
    scored = labels.join_labels(settings, "flight_delay")
    series = live_metrics(settings, "flight_delay", scored, "daily")
    overall = series[series.partition == "all"]
    assert len(overall) == 2 and overall["predictions"].sum() == 300
    day = scored.to_pandas()
    day = day[(day.request_time < datetime(2013, 12, 3, tzinfo=UTC)) & day.label.notna()]
    rmse = float(np.sqrt(np.mean((day.label - day.prediction) ** 2)))
    assert overall.iloc[0]["rmse"] == pytest.approx(rmse)
    assert set(series.partition) >= {"all", "JFK"} or set(series.partition) >= {"all", "__parent__"}
    assert metrics_path(settings, "flight_delay", "daily").is_file()


def test_monitor_metrics_command_prints_whole_dates_and_the_series_as_json(
    served_december,
) -> None:
    import json

    from typer.testing import CliRunner

    from maquette.cli import app

    settings, _ = served_december
    if not labels.labels_path(settings, "flight_delay").is_file():  # run alone (-k)
        labels.ingest_labels(settings, "flight_delay")
    env = {  # the fixture's own prediction log, as the command finds it in a project
        "MAQUETTE_PREDICTIONS_STREAM": settings.predictions.stream,
        "MAQUETTE_PREDICTIONS_FOLDER": str(settings.predictions.folder),
    }
    argv = ["monitor", "metrics", "flight_delay", "--project", str(settings.project_dir)]
    table = CliRunner().invoke(app, argv, env=env)  # stdout is not a terminal, as in a pipe
    assert table.exit_code == 0, table.output
    assert "…" not in table.stdout and "2013-12-02 00:00" in table.stdout
    printed = CliRunner().invoke(app, [*argv, "--json"], env=env)
    assert printed.exit_code == 0, printed.output
    document = json.loads(printed.stdout)
    scored = labels.join_labels(settings, "flight_delay")
    series = live_metrics(settings, "flight_delay", scored, "daily")
    assert document["model"] == "flight_delay" and document["window"] == "daily"
    rows = document["series"]
    assert [(r["version"], r["partition"], r["window_start"], r["predictions"]) for r in rows] == [
        (r.version, r.partition, r.window_start.isoformat(), r.predictions)
        for r in series.itertuples()
    ]
    overall = [r for r in rows if r["partition"] == "all"]
    assert overall[0]["rmse"] == pytest.approx(series[series.partition == "all"].iloc[0]["rmse"])


def test_labels_keyed_by_prediction_id_report_unknown_ids(served_december, tmp_path: Path) -> None:
    settings, ids = served_december
    file = tmp_path / "labels.parquet"
    pq.write_table(
        pa.table({"prediction_id": [ids[0], "not-a-prediction"], "label": [12.0, 3.0]}), file
    )
    declared = labels.join_labels(settings, "flight_delay")
    result = labels.ingest_labels(settings, "flight_delay", file)
    assert result.unknown_ids == 1
    # A later ingest from the declared source (every monitoring pass does one) keeps the file's
    # labels; a prediction's own label wins over the one its flight's outcome gives.
    labels.ingest_labels(settings, "flight_delay")
    scored = labels.join_labels(settings, "flight_delay").to_pandas().set_index("prediction_id")
    assert scored.loc[ids[0], "label"] == 12.0
    before = declared.to_pandas().set_index("prediction_id")
    others = [i for i in ids[1:] if i in before.index]
    assert scored.loc[others, "label"].equals(before.loc[others, "label"])
    newly_labelled = 1 if np.isnan(before.loc[ids[0], "label"]) else 0
    assert scored["label"].notna().sum() == before["label"].notna().sum() + newly_labelled


def test_bad_label_inputs_say_what_is_wrong(served_december, tmp_path: Path) -> None:
    settings, _ = served_december
    bad = tmp_path / "bad.csv"
    bad.write_text("id,value\n1,2\n")
    with pytest.raises(InvalidEntityFrame, match="lacks column"):
        labels.ingest_labels(settings, "flight_delay", bad)
    with pytest.raises(ConfigError, match="unknown window 'fortnightly'"):
        live_metrics(
            settings, "flight_delay", labels.join_labels(settings, "flight_delay"), "fortnightly"
        )
    with pytest.raises(DataNotLoaded, match="no scored predictions"):
        live_metrics(
            settings,
            "flight_delay",
            labels.join_labels(settings, "flight_delay"),
            since=datetime(2020, 1, 1, tzinfo=UTC),
        )


def test_monitor_commands_report_errors_with_exit_codes(loaded_project: Settings) -> None:
    from typer.testing import CliRunner

    from maquette.cli import app

    project = ["--project", str(loaded_project.project_dir)]
    unknown = CliRunner().invoke(app, ["monitor", "metrics", "nope", *project])
    assert unknown.exit_code == 2 and "no model named 'nope'" in unknown.output
    bad_file = CliRunner().invoke(
        app, ["labels", "ingest", "flight_delay", "--file", "/nonexistent.csv", *project]
    )
    assert bad_file.exit_code == 6 and "does not exist" in bad_file.output
