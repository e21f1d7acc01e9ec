"""A drift report draws each chart it shows once: the per-column charts DataDriftPreset drops
are not drawn, and nothing else about the report changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maquette.monitoring import evidently_runs

FEATURES = ["temp", "wind_speed", "carrier"]


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(7)

    def frame(shift: float, rows: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "temp": rng.normal(10 + shift, 3, rows),
                "wind_speed": rng.gamma(2, 4, rows),
                "carrier": pd.Series(rng.choice(["AA", "B6", "UA"], rows)).astype("string"),
                "prediction": rng.normal(shift, 1, rows),
            }
        )

    return frame(2.0, 800), frame(0.0, 1200)


def _report(skip: bool, path: Path) -> tuple[Any, str]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=["temp", "wind_speed", "prediction"], categorical_columns=["carrier"]
    )
    current, reference = (Dataset.from_pandas(f, data_definition=definition) for f in _frames())
    report = Report([DataDriftPreset(columns=FEATURES), ValueDrift(column="prediction")])
    if skip:
        with evidently_runs._without_unshown_charts(FEATURES):
            snapshot = report.run(current, reference)
    else:
        snapshot = report.run(current, reference)
    snapshot.save_html(str(path))
    return snapshot, path.read_text()


def test_unshown_per_column_charts_are_skipped_and_the_report_is_the_same(
    tmp_path: Path,
) -> None:
    stock, stock_html = _report(False, tmp_path / "stock.html")
    ours, our_html = _report(True, tmp_path / "ours.html")
    assert evidently_runs.drift_scores(ours) == evidently_runs.drift_scores(stock)
    # Every column's row of the drift table, and the prediction's own chart, are still drawn.
    for marker in [*FEATURES, "prediction", "Drift is detected", "Drift is not detected"]:
        assert our_html.count(marker) == stock_html.count(marker), marker
    assert abs(len(our_html) - len(stock_html)) < 0.01 * len(stock_html)
    # What is gone: the charts nobody saw, from the snapshot the workspace stores.
    assert len(ours.dumps()) < 0.8 * len(stock.dumps())
    # Outside the block, ValueDrift draws its chart again.
    again, _ = _report(False, tmp_path / "again.html")
    assert len(again.dumps()) > 0.9 * len(stock.dumps())


def test_the_workspace_stores_a_snapshot_as_evidently_writes_it(tmp_path: Path) -> None:
    from evidently.ui.storage.local.base import LocalState

    snapshot, _ = _report(True, tmp_path / "report.html")
    model = snapshot.to_snapshot_model()
    stock = LocalState(str(tmp_path / "stock"))
    stock.write_snapshot("project", "run", model)
    ours = LocalState(str(tmp_path / "ours"))
    evidently_runs.write_snapshot(ours, "project", "run", model)
    written = [tmp_path / side / "project" / "snapshots" / "run.json" for side in ("stock", "ours")]
    assert written[0].read_bytes() == written[1].read_bytes()
    assert stock.read_snapshot("project", "run") == ours.read_snapshot("project", "run")
