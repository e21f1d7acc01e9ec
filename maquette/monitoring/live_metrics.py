"""Live metrics: how a served model scores on the predictions whose label has arrived.

For every window (hourly, daily), version and partition ("all" plus each partition): the
regression or binary metrics of `training/metrics.py` on the rows whose label is known, with the
prediction count, label coverage and missing-feature rate. Stored as a Parquet time series per
model and window; `quality_scores` gives the same metrics for one set of labelled rows (the
drift reports use it).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maquette import registry
from maquette.config import Settings
from maquette.data.sql import duckdb_connection
from maquette.errors import ConfigError, DataNotLoaded
from maquette.training.metrics import binary_metrics, regression_metrics
from maquette.version_record import VersionRecord

WINDOWS = {"hourly": "hour", "daily": "day"}
# What live metrics read of the scored-predictions table (not the wide JSON columns).
METRIC_COLUMNS = ["request_time", "version", "partition", "prediction", "label", "missing", "stale"]


def metrics_path(settings: Settings, name: str, window: str) -> Path:
    return settings.offline_store / "monitoring" / f"{name}_{window}.parquet"


def quality_scores(record: VersionRecord, y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """The live metrics of a version's task on labelled rows (same code as evaluation)."""
    if record.task == "regression":
        m = regression_metrics(y, pred, record.label_shift)
        return {k: m.get(k) for k in ("r2", "rmse", "mae", "rmsle")}
    m = binary_metrics(y, pred, record.threshold or 0.5)
    return {k: m.get(k) for k in ("auc", "log_loss", "precision", "recall")}


def _group_sums(
    con: duckdb.DuckDBPyConnection, record: VersionRecord, version: str, unit: str
) -> pd.DataFrame:
    """Per (partition incl. "all", window): counts and the sums the task's metrics need.

    One DuckDB pass over the narrow columns; a million predictions take about a second.
    """
    base = f"""
        SELECT partition, date_trunc('{unit}', request_time) AS window_start,
               prediction AS p, label AS y,
               (coalesce(len(missing), 0) + coalesce(len(stale), 0)) > 0 AS hidden
        FROM scored WHERE version = $version"""
    views = f"WITH b AS ({base}), v AS (SELECT * FROM b UNION ALL SELECT * REPLACE ('all' AS partition) FROM b)"
    counts = """count(*) AS predictions, count(y) AS labelled,
                avg(hidden::DOUBLE) AS missing_feature_rate"""
    if record.task == "regression":
        shift = float(record.label_shift)
        sql = f"""{views}
            SELECT partition, window_start, {counts},
                   sum((y - p) ^ 2) AS se, sum(abs(y - p)) AS ae,
                   sum((ln(1 + greatest(p + {shift}, 0)) - ln(1 + greatest(y + {shift}, 0))) ^ 2)
                       FILTER (WHERE y IS NOT NULL) AS le,
                   sum(y) AS sy, sum(y * y) AS sy2
            FROM v GROUP BY ALL"""
    else:
        threshold = float(record.threshold or 0.5)
        # AUC as Mann-Whitney U: the average rank of positives among the labelled predictions.
        sql = f"""{views},
            r AS (
                SELECT *, rank() OVER w + (count(*) OVER (PARTITION BY partition, window_start, p)
                          - 1) / 2 AS avg_rank
                FROM v WHERE y IS NOT NULL
                WINDOW w AS (PARTITION BY partition, window_start ORDER BY p)
            ),
            ranked AS (
                SELECT partition, window_start, sum(y) AS pos, sum(1 - y) AS neg,
                       sum(avg_rank * y) AS pos_rank,
                       sum(-(y * ln(least(greatest(p, 1e-6), 1 - 1e-6))
                           + (1 - y) * ln(1 - least(greatest(p, 1e-6), 1 - 1e-6)))) AS ll,
                       count(*) FILTER (WHERE p >= {threshold} AND y = 1) AS tp,
                       count(*) FILTER (WHERE p >= {threshold} AND y = 0) AS fp,
                       count(*) FILTER (WHERE p < {threshold} AND y = 1) AS fn
                FROM r GROUP BY ALL
            ),
            c AS (SELECT partition, window_start, {counts} FROM v GROUP BY ALL)
            SELECT * FROM c LEFT JOIN ranked USING (partition, window_start)"""
    return con.execute(sql, {"version": version}).df()


def _metrics_from_sums(task: str, sums: pd.DataFrame) -> pd.DataFrame:
    out = sums[["partition", "window_start", "predictions", "labelled", "missing_feature_rate"]]
    out = out.assign(label_coverage=sums["labelled"] / sums["predictions"])
    n = sums["labelled"].where(sums["labelled"] > 0)
    if task == "regression":
        total = sums["sy2"] - sums["sy"] ** 2 / n
        return out.assign(
            r2=(1 - sums["se"] / total).where((n > 1) & (total > 0)),
            rmse=np.sqrt(sums["se"] / n),
            mae=sums["ae"] / n,
            rmsle=np.sqrt(sums["le"] / n),
        )
    u = sums["pos_rank"] - sums["pos"] * (sums["pos"] + 1) / 2
    return out.assign(
        auc=(u / (sums["pos"] * sums["neg"])).where((sums["pos"] > 0) & (sums["neg"] > 0)),
        log_loss=sums["ll"] / n,
        precision=(sums["tp"] / (sums["tp"] + sums["fp"])).where(n > 0).fillna(0.0).where(n > 0),
        recall=(sums["tp"] / (sums["tp"] + sums["fn"])).where(n > 0).fillna(0.0).where(n > 0),
    )


def live_metrics(
    settings: Settings,
    name: str,
    scored: pa.Table,
    window: str = "daily",
    since: datetime | None = None,
) -> pd.DataFrame:
    """The metrics time series of `name` from its scored predictions; stored as Parquet."""

    if window not in WINDOWS:
        raise ConfigError(f"unknown window {window!r}.", f"Use one of {', '.join(WINDOWS)}.")
    con = duckdb_connection()
    scored = scored.select(METRIC_COLUMNS)
    if since is not None:
        scored = scored.filter(pc.greater_equal(scored["request_time"], pa.scalar(since)))
    if scored.num_rows == 0:
        raise DataNotLoaded(
            f"no scored predictions of {name!r} in the chosen period.",
            "Serve predictions, drain them, ingest labels and join them first.",
        )
    con.register("scored", scored)
    parts = []
    for version in sorted(set(scored["version"].to_pylist())):
        record = registry.resolve(settings, f"{name}:{version}").record
        sums = _group_sums(con, record, version, WINDOWS[window])
        parts.append(_metrics_from_sums(record.task, sums).assign(version=version))
    series = pd.concat(parts, ignore_index=True)
    if settings.model_spec(name).partition_by is None:
        # Unpartitioned: every prediction is the parent's, the same rows as "all".
        series = series[series["partition"] == "all"]
    series.insert(0, "model", name)
    series.insert(3, "window", window)
    series = series.sort_values(["version", "partition", "window_start"]).reset_index(drop=True)
    target = metrics_path(settings, name, window)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(series, preserve_index=False), target)
    return series
