"""Monitoring: is a served model still right? Michelangelo's last step, run as one pass.

`run` is the `monitor` flow's work: drain the prediction log, ingest the late labels, join them
to the logged predictions (`labels.py`), then per model
- live metrics: for every window (hourly, daily), version and partition ("all" plus each
  partition), the regression or binary metrics of `metrics.py` on the rows whose label is
  known, with the prediction count, label coverage and missing-feature rate; a Parquet time series;
- Evidently drift and quality reports per report window (`drift.py`);
- training/serving skew on a sample (`skew.py`);
and, once, the freshness of every feature view in Redis. Thresholds from the settings turn
these into alerts (`alerts.py`). Everything lands in an index page, `reports/monitoring/index.html`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from maquette.config import Settings
from maquette.data.redis_server import unreachable
from maquette.errors import ConfigError, DataNotLoaded
from maquette.features.layer import FeatureLayer
from maquette.monitoring import alerts, drift, labels, skew
from maquette.serving import prediction_log as predictions
from maquette.training.metrics import binary_metrics, regression_metrics

WINDOWS = {"hourly": "hour", "daily": "day"}
# What live metrics read of the scored-predictions table (not the wide JSON columns).
METRIC_COLUMNS = ["request_time", "version", "partition", "prediction", "label", "missing", "stale"]


def metrics_path(settings: Settings, name: str, window: str) -> Path:
    return settings.offline_store / "monitoring" / f"{name}_{window}.parquet"


def quality_scores(record: dict[str, Any], y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """The live metrics of a version's task on labelled rows (same code as evaluation)."""
    if record["task"] == "regression":
        m = regression_metrics(y, pred, record.get("label_shift", 0.0))
        return {k: m.get(k) for k in ("r2", "rmse", "mae", "rmsle")}
    m = binary_metrics(y, pred, record.get("threshold") or 0.5)
    return {k: m.get(k) for k in ("auc", "log_loss", "precision", "recall")}


def _group_sums(
    con: duckdb.DuckDBPyConnection, record: dict[str, Any], version: str, unit: str
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
    if record["task"] == "regression":
        shift = float(record.get("label_shift", 0.0))
        sql = f"""{views}
            SELECT partition, window_start, {counts},
                   sum((y - p) ^ 2) AS se, sum(abs(y - p)) AS ae,
                   sum((ln(1 + greatest(p + {shift}, 0)) - ln(1 + greatest(y + {shift}, 0))) ^ 2)
                       FILTER (WHERE y IS NOT NULL) AS le,
                   sum(y) AS sy, sum(y * y) AS sy2
            FROM v GROUP BY ALL"""
    else:
        threshold = float(record.get("threshold") or 0.5)
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
    from maquette import registry

    if window not in WINDOWS:
        raise ConfigError(f"unknown window {window!r}.", f"Use one of {', '.join(WINDOWS)}.")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    scored = scored.select(
        ["request_time", "version", "partition", "prediction", "label", "missing", "stale"]
    )
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
        parts.append(_metrics_from_sums(record["task"], sums).assign(version=version))
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


# ------------------------------------------------------------------------------ freshness


@dataclass
class Freshness:
    """The newest event time of a feature view in the online store, against its TTL."""

    view: str
    ttl_s: float | None
    newest: datetime | None
    age_s: float | None
    stale: bool


def freshness(
    settings: Settings, as_of: datetime | None = None, layer: FeatureLayer | None = None
) -> list[Freshness]:
    """Per feature view: newest `_ts` stored in Redis, its age at `as_of` (default now), stale?"""
    from maquette.features import redis_layout as wire

    layer = layer or FeatureLayer(settings)
    now = as_of or datetime.now(UTC)
    views = layer._feature_views()
    fields = [wire.ts_field(v.name) for v in views]
    newest: list[float | None] = [None] * len(views)
    client = layer.redis
    pattern = b"*" + settings.feast.project.encode()
    try:
        keys = list(client.scan_iter(match=pattern, count=5000, _type="HASH"))
        for start in range(0, len(keys), 5000):
            pipe = client.pipeline(transaction=False)
            for key in keys[start : start + 5000]:
                pipe.hmget(key, fields)
            for reply in pipe.execute():
                for i, raw in enumerate(reply):
                    seconds = wire.decode_timestamp_seconds(raw)
                    best = newest[i]
                    if seconds is not None and (best is None or seconds > best):
                        newest[i] = seconds
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise unreachable(settings, exc) from exc
    out = []
    for view, seconds in zip(views, newest, strict=True):
        ttl = view.ttl.total_seconds() if view.ttl else None  # a zero TTL means no limit
        when = datetime.fromtimestamp(seconds, UTC) if seconds is not None else None
        age = (now - when).total_seconds() if when else None
        stale = when is None or (ttl is not None and age is not None and age > ttl)
        out.append(Freshness(view.name, ttl, when, age, stale))
    return out


def freshness_alerts(views: list[Freshness]) -> list[alerts.Alert]:
    return [
        alerts.Alert(
            "freshness",
            None,
            None,
            None,
            f.newest.isoformat() if f.newest else None,
            f"freshness:{f.view}",
            f.age_s if f.age_s is not None else float("inf"),
            f.ttl_s or 0.0,
            f"feature view {f.view} has no rows in the online store; run `maquette features "
            "materialize`."
            if f.newest is None
            else f"feature view {f.view}: newest value is {_duration(f.age_s or 0)} old, "
            f"older than its TTL of {_duration(f.ttl_s or 0)}; materialization is late.",
        )
        for f in views
        if f.stale
    ]


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


# ----------------------------------------------------------------------------- one pass


@dataclass
class ModelFindings:
    """What one pass found for one model."""

    name: str
    predictions: int
    labelled: int
    metrics: dict[str, pd.DataFrame]
    reports: list[drift.WindowReport]
    skew: list[skew.SkewReport]
    unknown_label_ids: int = 0


@dataclass
class MonitorRun:
    """What `maquette monitor run` did."""

    as_of: datetime
    drained: int
    models: dict[str, ModelFindings]
    skipped: dict[str, str]
    freshness: list[Freshness]
    new_alerts: list[alerts.Alert]
    webhook_error: str | None
    retrained: dict[str, str]
    index: Path
    workspace: Path
    all_alerts: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)


def _direct(label: str, fn: Any, *args: Any) -> Any:
    return fn(*args)


def monitor_model(
    settings: Settings,
    name: str,
    as_of: datetime | None = None,
    announce: Callable[[str], None] = print,
) -> ModelFindings:
    """Labels (known by `as_of`), join, metrics per window, drift and quality reports, skew."""
    ingested = labels.ingest_labels(settings, name)
    narrow = labels.join_labels(settings, name, as_of, METRIC_COLUMNS)
    if narrow.num_rows == 0:
        raise DataNotLoaded(
            f"no logged predictions of {name!r} yet.",
            f"Serve {name} (POST /predict) and drain the log (`maquette predictions drain`).",
        )
    labelled = narrow.num_rows - narrow["label"].null_count
    announce(f"{name}: {narrow.num_rows:,} predictions, {labelled:,} with labels")
    series: dict[str, pd.DataFrame] = {
        w: live_metrics(settings, name, narrow, w) for w in settings.monitoring.windows
    }
    scored = pq.read_table(labels.scored_path(settings, name))
    reports = drift.window_reports(settings, name, scored, announce)
    skews = skew.skew_report(settings, name, scored)
    return ModelFindings(
        name, narrow.num_rows, labelled, series, reports, skews, ingested.unknown_ids
    )


def run(
    settings: Settings,
    models: list[str] | None = None,
    as_of: datetime | None = None,
    drain: bool = True,
    announce: Callable[[str], None] = print,
    step: Any = _direct,
) -> MonitorRun:
    """One monitoring pass (the `monitor` flow passes a `step` that makes each part a task)."""
    began = time.perf_counter()
    for name in models or []:
        settings.model_spec(name)  # unknown names fail before any work
    drained = step("drain", predictions.drain, settings).entries if drain else 0
    wanted = models or [n for n, s in settings.models.items() if s.labels is not None]
    logged = _logged_models(settings)
    results: dict[str, ModelFindings] = {}
    skipped: dict[str, str] = {}
    found: list[alerts.Alert] = []
    for name in wanted:
        if name not in logged:
            if models:
                raise DataNotLoaded(
                    f"no logged predictions of {name!r} yet.",
                    f"Serve {name} (POST /predict), then run `maquette predictions drain`.",
                )
            skipped[name] = "no logged predictions yet"
            continue
        result = step(f"monitor-{name}", monitor_model, settings, name, as_of, announce)
        results[name] = result
        primary = result.metrics[settings.monitoring.windows[0]]
        found += alerts.metric_alerts(settings, name, primary)
        found += alerts.drift_alerts(settings, name, result.reports)
    if not results and not models:
        raise DataNotLoaded(
            "no logged predictions of any model yet.",
            "Serve predictions (`maquette serve`, POST /predict), then run this again.",
        )
    views = step("freshness", freshness, settings, as_of)
    found += freshness_alerts(views)
    new = alerts.record(settings, found)
    webhook_error = alerts.send_webhook(settings, new)
    retrained: dict[str, str] = {}
    for name in sorted({a.model for a in new if a.model and a.kind in alerts.ACCURACY_KINDS}):
        if settings.model_spec(name).monitoring.retrain_on_alert:
            announce(f"{name}: alert raised, training a candidate version")
            retrained[name] = step(f"retrain-{name}", alerts.retrain, settings, name)
    outcome = MonitorRun(
        as_of or datetime.now(UTC),
        drained,
        results,
        skipped,
        views,
        new,
        webhook_error,
        retrained,
        index_path(settings),
        settings.path(settings.monitoring.workspace),
        alerts.recorded(settings),
    )
    from maquette.training.report import write_monitoring_index

    write_monitoring_index(outcome)
    outcome.seconds["total"] = time.perf_counter() - began
    return outcome


def _logged_models(settings: Settings) -> set[str]:
    folder = settings.path(settings.predictions.folder)
    return {p.name.removeprefix("model=") for p in folder.glob("date=*/model=*")}


def index_path(settings: Settings) -> Path:
    return settings.path(settings.paths.reports) / "monitoring" / "index.html"
