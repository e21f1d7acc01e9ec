"""Monitoring: live accuracy of served models, per version, partition and time window.

Built on the scored-predictions table (`labels.join_labels`). For every window (hourly or
daily, by the prediction's request time), version and partition ("all" plus each partition):
the regression or binary metrics of `metrics.py` on the rows whose label is known, the
prediction count, the label coverage and the missing-feature rate. The series is stored as
Parquet in the offline store. (Evidently reports, alerts, skew and freshness: still to come.)
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maquette.config import Settings
from maquette.errors import ConfigError, DataNotLoaded
from maquette.metrics import binary_metrics, regression_metrics

WINDOWS = {"hourly": "h", "daily": "D"}


def metrics_path(settings: Settings, name: str, window: str) -> Path:
    return settings.offline_store / "monitoring" / f"{name}_{window}.parquet"


def _scores(
    task: str, y: np.ndarray, pred: np.ndarray, shift: float, threshold: float
) -> dict[str, Any]:
    if task == "regression":
        m = regression_metrics(y, pred, shift)
        return {k: m.get(k) for k in ("r2", "rmse", "mae", "rmsle")}
    m = binary_metrics(y, pred, threshold)
    return {k: m.get(k) for k in ("auc", "log_loss", "precision", "recall")}


def live_metrics(
    settings: Settings,
    name: str,
    scored: pa.Table,
    window: str = "daily",
    since: datetime | None = None,
) -> pd.DataFrame:
    """The metrics time series of `name` from its scored predictions; stored as Parquet."""
    from maquette import registry

    if window not in WINDOWS:
        raise ConfigError(f"unknown window {window!r}.", f"Use one of {', '.join(WINDOWS)}.")
    frame = scored.to_pandas()
    if since is not None:
        frame = frame[frame["request_time"] >= since]
    if frame.empty:
        raise DataNotLoaded(
            f"no scored predictions of {name!r} in the chosen period.",
            "Serve predictions, drain them, ingest labels and join them first.",
        )
    frame["window_start"] = frame["request_time"].dt.floor(WINDOWS[window])
    frame["missing_share"] = frame["missing"].apply(
        lambda m: 0.0 if m is None else float(len(m) > 0)
    )
    records = []
    for version, rows in frame.groupby("version"):
        record = registry.resolve(settings, f"{name}:{version}").record
        task, shift, threshold = (
            record["task"],
            record.get("label_shift", 0.0),
            record.get("threshold") or 0.5,
        )
        views = [("all", rows), *((str(p), g) for p, g in rows.groupby("partition"))]
        for partition, part in views:
            for start, group in part.groupby("window_start"):
                known = group[group["label"].notna()]
                entry = {
                    "model": name,
                    "version": version,
                    "partition": partition,
                    "window": window,
                    "window_start": start,
                    "predictions": len(group),
                    "labelled": len(known),
                    "label_coverage": len(known) / len(group),
                    "missing_feature_rate": float(group["missing_share"].mean()),
                }
                if len(known):
                    entry |= _scores(
                        task,
                        known["label"].to_numpy(float),
                        known["prediction"].to_numpy(float),
                        shift,
                        threshold,
                    )
                records.append(entry)
    series = pd.DataFrame.from_records(records).sort_values(
        ["version", "partition", "window_start"]
    )
    target = metrics_path(settings, name, window)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(series, preserve_index=False), target)
    return series
