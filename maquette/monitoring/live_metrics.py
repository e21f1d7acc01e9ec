"""Live metrics: how a served model scores on the predictions whose label has arrived.

For every window of a window spec (`daily`, `6h`, `monthly`, `30 labelled`, ...), version and
partition ("all" plus each partition): the regression or binary metrics of
`training/metrics.py` on the rows whose label is known, the bias, the prediction count, label
coverage and missing-feature rate, whether the window is complete and whether it holds enough
labels and rows to be judged. Stored as a Parquet time series per model and window.
`feature_missing` gives each feature's missing-or-stale share per window next to its null share
in training; `quality_scores` gives the metrics of one set of labelled rows (drift reports).

Time windows are cut in DuckDB by `WindowSpec.start_sql`; count windows (`<N> labelled`,
`<N> rows`) number the rows of each partition in request-time order. An unlabelled prediction
belongs to the labelled-count window that is filling when it is requested, so a window of
"30 labelled" holds exactly 30 labelled rows once complete, plus the unlabelled ones between them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maquette import registry
from maquette.config import Settings, alert_window
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.errors import DataNotLoaded
from maquette.training.metrics import binary_metrics, regression_metrics
from maquette.version_record import VersionRecord
from maquette.window_spec import WindowSpec, parse_window

# What live metrics read of the scored-predictions table (not the wide JSON columns).
METRIC_COLUMNS = ["request_time", "version", "partition", "prediction", "label", "missing", "stale"]
TASK_METRICS = {
    "regression": ["r2", "rmse", "mae", "rmsle", "bias"],
    "binary": ["auc", "log_loss", "precision", "recall"],
}
SERIES_COLUMNS = [
    "model",
    "version",
    "partition",
    "window",
    "window_start",
    "window_end",
    "complete",
    "predictions",
    "labelled",
    "label_coverage",
    "missing_feature_rate",
    "enough_labels",
    "enough_rows",
]
MISSING_COLUMNS = [
    "model",
    "version",
    "partition",
    "window",
    "window_start",
    "window_end",
    "complete",
    "predictions",
    "feature",
    "missing",
    "missing_rate",
    "training_rate",
]


def metrics_path(settings: Settings, name: str, window: str) -> Path:
    """The stored series of model `name` in `window` (a canonical window name, e.g. "daily")."""
    return settings.offline_store / "monitoring" / f"{name}_{window}.parquet"


def quality_scores(record: VersionRecord, y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """The live metrics of a version's task on labelled rows (same code as evaluation)."""
    if record.task == "regression":
        m = regression_metrics(y, pred, record.label_shift)
        bias = float(np.mean(np.asarray(pred, float) - np.asarray(y, float))) if len(y) else None
        return {**{k: m.get(k) for k in ("r2", "rmse", "mae", "rmsle")}, "bias": bias}
    m = binary_metrics(y, pred, record.threshold or 0.5)
    return {k: m.get(k) for k in TASK_METRICS["binary"]}


def _rows_sql(spec: WindowSpec, version: str, extra: str = "") -> str:
    """CTEs `v`: the version's rows once per partition and once as "all", each with its window
    key `wkey` (the window start for time windows, the window number for count windows)."""
    base = f"""
        SELECT partition, request_time, __rid, prediction AS p, label AS y, missing, stale,
               (coalesce(len(missing), 0) + coalesce(len(stale), 0)) > 0 AS hidden{extra}
        FROM scored WHERE version = {sql_literal(version)}"""
    order = "PARTITION BY partition ORDER BY request_time, __rid"
    if spec.is_time:
        key = spec.start_sql("request_time")
    elif spec.counts == "labelled":
        # Labelled rows before this one, so a window closes on its N-th labelled row and the
        # unlabelled rows after it open the next.
        key = (
            f"coalesce(sum((y IS NOT NULL)::BIGINT) OVER ({order} ROWS BETWEEN UNBOUNDED "
            f"PRECEDING AND 1 PRECEDING), 0) // {spec.count}"
        )
    else:
        key = f"(row_number() OVER ({order}) - 1) // {spec.count}"
    return f"""b AS ({base}),
        a AS (SELECT * FROM b UNION ALL SELECT * REPLACE ('all' AS partition) FROM b),
        v AS (SELECT *, {key} AS wkey FROM a)"""


def _group_sums(
    con: duckdb.DuckDBPyConnection, record: VersionRecord, version: str, spec: WindowSpec
) -> pd.DataFrame:
    """Per (partition incl. "all", window): counts and the sums the task's metrics need.

    One DuckDB pass over the narrow columns; a million predictions take about a second.
    """
    rows = _rows_sql(spec, version)
    counts = """count(*) AS predictions, count(y) AS labelled,
                avg(hidden::DOUBLE) AS missing_feature_rate,
                min(request_time) AS first_request, max(request_time) AS last_request"""
    if record.task == "regression":
        shift = float(record.label_shift)
        sql = f"""WITH {rows}
            SELECT partition, wkey, {counts},
                   sum((y - p) ^ 2) AS se, sum(abs(y - p)) AS ae, sum(p - y) AS pe,
                   sum((ln(1 + greatest(p + {shift}, 0)) - ln(1 + greatest(y + {shift}, 0))) ^ 2)
                       FILTER (WHERE y IS NOT NULL) AS le,
                   sum(y) AS sy, sum(y * y) AS sy2
            FROM v GROUP BY ALL"""
    else:
        threshold = float(record.threshold or 0.5)
        # AUC as Mann-Whitney U: the average rank of positives among the labelled predictions.
        sql = f"""WITH {rows},
            r AS (
                SELECT *, rank() OVER w + (count(*) OVER (PARTITION BY partition, wkey, p)
                          - 1) / 2 AS avg_rank
                FROM v WHERE y IS NOT NULL
                WINDOW w AS (PARTITION BY partition, wkey ORDER BY p)
            ),
            ranked AS (
                SELECT partition, wkey, sum(y) AS pos, sum(1 - y) AS neg,
                       sum(avg_rank * y) AS pos_rank,
                       sum(-(y * ln(least(greatest(p, 1e-6), 1 - 1e-6))
                           + (1 - y) * ln(1 - least(greatest(p, 1e-6), 1 - 1e-6)))) AS ll,
                       count(*) FILTER (WHERE p >= {threshold} AND y = 1) AS tp,
                       count(*) FILTER (WHERE p >= {threshold} AND y = 0) AS fp,
                       count(*) FILTER (WHERE p < {threshold} AND y = 1) AS fn
                FROM r GROUP BY ALL
            ),
            c AS (SELECT partition, wkey, {counts} FROM v GROUP BY ALL)
            SELECT * FROM c LEFT JOIN ranked USING (partition, wkey)"""
    return con.execute(sql).df()


def _metrics_from_sums(task: str, sums: pd.DataFrame) -> pd.DataFrame:
    out = sums[["partition", "wkey", "first_request", "last_request", "predictions", "labelled"]]
    out = out.assign(
        label_coverage=sums["labelled"] / sums["predictions"],
        missing_feature_rate=sums["missing_feature_rate"],
    )
    n = sums["labelled"].where(sums["labelled"] > 0)
    if task == "regression":
        total = sums["sy2"] - sums["sy"] ** 2 / n
        return out.assign(
            r2=(1 - sums["se"] / total).where((n > 1) & (total > 0)),
            rmse=np.sqrt(sums["se"] / n),
            mae=sums["ae"] / n,
            rmsle=np.sqrt(sums["le"] / n),
            bias=sums["pe"] / n,
        )
    u = sums["pos_rank"] - sums["pos"] * (sums["pos"] + 1) / 2
    return out.assign(
        auc=(u / (sums["pos"] * sums["neg"])).where((sums["pos"] > 0) & (sums["neg"] > 0)),
        log_loss=sums["ll"] / n,
        precision=(sums["tp"] / (sums["tp"] + sums["fp"])).where(n > 0).fillna(0.0).where(n > 0),
        recall=(sums["tp"] / (sums["tp"] + sums["fn"])).where(n > 0).fillna(0.0).where(n > 0),
    )


def _bounds(frame: pd.DataFrame, spec: WindowSpec, as_of: datetime) -> pd.DataFrame:
    """`window_start`, `window_end` and `complete` from the window key and the request times.

    Time windows: [start, end), complete once end <= as_of. Count windows: the first and last
    request time of their rows, complete once they hold their N labelled rows (or N rows).
    """
    if spec.is_time:
        start = pd.to_datetime(frame["wkey"], utc=True)
        ends = {s: pd.Timestamp(spec.end_of(s.to_pydatetime())) for s in start.unique()}
        end = start.map(ends)
        complete = end <= pd.Timestamp(as_of)
    else:
        start = pd.to_datetime(frame["first_request"], utc=True)
        end = pd.to_datetime(frame["last_request"], utc=True)
        held = frame["labelled"] if spec.counts == "labelled" else frame["predictions"]
        complete = held >= int(spec.count or 0)
    return frame.assign(window_start=start, window_end=end, complete=complete.astype(bool))


def _prepare(
    scored: pa.Table, name: str, as_of: datetime | None
) -> tuple[duckdb.DuckDBPyConnection, pa.Table]:
    """A DuckDB connection with `scored` (rows before `as_of`, a row id for ties) registered."""
    if as_of is not None:
        scored = scored.filter(pc.less(scored["request_time"], pa.scalar(as_of)))
    if scored.num_rows == 0:
        raise DataNotLoaded(
            f"no scored predictions of {name!r} in the chosen period.",
            "Serve predictions, drain them, ingest labels and join them first.",
        )
    scored = scored.append_column("__rid", pa.array(np.arange(scored.num_rows)))
    con = duckdb_connection()
    con.register("scored", scored)
    return con, scored


def _utc(when: datetime | None) -> datetime | None:
    """An aware UTC instant (a naive one is taken as UTC, as everywhere in Maquette)."""
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _spec_of(settings: Settings, name: str, window: str | WindowSpec | None) -> WindowSpec:
    if window is None:
        return alert_window(settings, name)
    return window if isinstance(window, WindowSpec) else parse_window(window)


def _record(
    settings: Settings, name: str, version: str, records: Mapping[str, VersionRecord] | None
) -> VersionRecord:
    if records is not None and version in records:
        return records[version]
    return registry.resolve(settings, f"{name}:{version}").record


def live_metrics(
    settings: Settings,
    name: str,
    scored: pa.Table,
    window: str | WindowSpec | None = None,
    since: datetime | None = None,
    as_of: datetime | None = None,
    records: Mapping[str, VersionRecord] | None = None,
) -> pd.DataFrame:
    """The metrics series of `name` per window of `window` (default: the model's alert window).

    Rows requested at or after `as_of` are left out; a time window is complete once its end is
    at or before `as_of` (default: now). `since` keeps the windows ending at or after it.
    `records` (version id -> record) spares reading the registry. Stored as Parquet at
    `metrics_path(settings, name, spec.name)`.
    """
    spec = _spec_of(settings, name, window)
    thresholds = settings.model_spec(name).monitoring.thresholds
    since, as_of = _utc(since), _utc(as_of)
    if since is not None and spec.is_time:
        # A time window's rows do not depend on earlier ones: skip them before the work.
        scored = scored.filter(pc.greater_equal(scored["request_time"], pa.scalar(since)))
    con, scored = _prepare(scored.select(METRIC_COLUMNS), name, as_of)
    parts = []
    for version in sorted(set(scored["version"].to_pylist())):
        record = _record(settings, name, version, records)
        sums = _group_sums(con, record, version, spec)
        parts.append(_metrics_from_sums(record.task, sums).assign(version=version))
    series = _bounds(pd.concat(parts, ignore_index=True), spec, as_of or datetime.now(UTC))
    if since is not None and not spec.is_time:
        # Count windows are numbered from the first prediction, so they are cut before
        # filtering: the same rows make the same windows whatever `since` is.
        series = series[series["window_end"] >= pd.Timestamp(since)]
    if settings.model_spec(name).partition_by is None:
        # Unpartitioned: every prediction is the parent's, the same rows as "all".
        series = series[series["partition"] == "all"]
    series = series.assign(
        model=name,
        window=spec.name,
        enough_labels=series["labelled"] >= thresholds.min_labelled,
        enough_rows=series["predictions"] >= thresholds.min_rows,
    )
    metrics = [
        c for c in ("r2", "rmse", "mae", "rmsle", "bias", *TASK_METRICS["binary"]) if c in series
    ]
    series = series[SERIES_COLUMNS + metrics]
    series = series.sort_values(["version", "partition", "window_start"]).reset_index(drop=True)
    target = metrics_path(settings, name, spec.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Whole or not at all: the console reads it while a pass may be writing it.
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    pq.write_table(pa.Table.from_pandas(series, preserve_index=False), partial)
    os.replace(partial, target)
    return series


def stored_series(settings: Settings, name: str, window: str) -> pd.DataFrame | None:
    """The series the last monitoring pass stored for `name` in `window`, if any."""
    path = metrics_path(settings, name, window)
    return pq.read_table(path).to_pandas() if path.is_file() else None


def feature_missing(
    settings: Settings,
    name: str,
    scored: pa.Table,
    window: str | WindowSpec | None = None,
    as_of: datetime | None = None,
    records: Mapping[str, VersionRecord] | None = None,
) -> pd.DataFrame:
    """Per (version, window, feature): the share of predictions served with the feature missing
    or stale, next to the feature's null share in the version's training rows.

    Windows as in `live_metrics` for partition "all" (default: the model's alert window).
    """
    spec, as_of = _spec_of(settings, name, window), _utc(as_of)
    # With the served values at hand, a value served as null counts too: a broken pipeline
    # writes nulls that Redis returns as found (D3's incident), not as missing.
    served = "features" in scored.column_names
    con, scored = _prepare(
        scored.select([*METRIC_COLUMNS, *(["features"] if served else [])]), name, as_of
    )
    parts = []
    for version in sorted(set(scored["version"].to_pylist())):
        record = _record(settings, name, version, records)
        rows = _rows_sql(spec, version, ", features" if served else "")
        windows = con.execute(f"""WITH {rows}
            SELECT wkey, count(*) AS predictions, count(y) AS labelled,
                   min(request_time) AS first_request, max(request_time) AS last_request
            FROM v WHERE partition = 'all' GROUP BY ALL""").df()
        hidden = _unavailable_counts(con, rows, list(record.feature_names), served)
        features = pd.DataFrame({"feature": list(record.feature_names)})
        grid = windows.merge(features, how="cross").merge(
            hidden, on=["wkey", "feature"], how="left"
        )
        grid["missing"] = grid["missing"].fillna(0).astype("int64")
        grid["missing_rate"] = grid["missing"] / grid["predictions"]
        grid["training_rate"] = grid["feature"].map(
            {f: _training_null_rate(record, f) for f in record.feature_names}
        )
        parts.append(grid.assign(version=version))
    frame = _bounds(pd.concat(parts, ignore_index=True), spec, as_of or datetime.now(UTC))
    frame = frame.assign(model=name, partition="all", window=spec.name)[MISSING_COLUMNS]
    return frame.sort_values(["version", "window_start", "feature"]).reset_index(drop=True)


def _unavailable_counts(
    con: duckdb.DuckDBPyConnection, rows: str, features: list[str], served: bool
) -> pd.DataFrame:
    """Per (window, feature): predictions whose value of the feature was missing, stale or
    (when the served values are read) null. A feature both missing and stale counts once."""
    if not served:
        return con.execute(f"""WITH {rows},
            h AS (SELECT wkey, unnest(list_distinct(list_concat(coalesce(missing, []),
                                                               coalesce(stale, [])))) AS feature
                  FROM v WHERE partition = 'all')
            SELECT wkey, feature, count(*) AS missing FROM h GROUP BY ALL""").df()
    counts = ",\n".join(
        f"count(*) FILTER (WHERE list_contains(coalesce(missing, []), {sql_literal(f)}) "
        f"OR list_contains(coalesce(stale, []), {sql_literal(f)}) "
        f"OR json_extract_string(features, {sql_literal(json_path(f))}) IS NULL) AS c{i}"
        for i, f in enumerate(features)
    )
    wide = con.execute(
        f"WITH {rows} SELECT wkey, {counts} FROM v WHERE partition = 'all' GROUP BY ALL"
    ).df()
    long = wide.melt(id_vars=["wkey"], var_name="column", value_name="missing")
    long["feature"] = long["column"].map({f"c{i}": f for i, f in enumerate(features)})
    return long.drop(columns="column")


def json_path(field: str) -> str:
    """A DuckDB JSON path to one top-level field, whatever characters its name holds."""
    return '$."' + field.replace('"', '\\"') + '"'


def _training_null_rate(record: VersionRecord, feature: str) -> float:
    """The feature's null share in the version's training rows (0 when not recorded)."""
    shape = (record.distributions or {}).get(feature) or {}
    rows = shape.get("rows") or 0
    return float(shape.get("nulls") or 0) / rows if rows else 0.0
