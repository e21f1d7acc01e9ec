"""The live accuracy page: what the monitoring passes stored for one model.

The metric over time per version and partition (the alert threshold drawn, breaching windows
marked, each point a link to its version), label coverage and missing features beside it, the
drift share of each report window with its top drifted features and its Evidently report, and
the skew of each alert window. Read from the files the passes write (`live_metrics`,
`drift`, `skew`): a page never recomputes a pass.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pandas as pd

from maquette.config import Settings
from maquette.monitoring import drift, incidents, skew
from maquette.monitoring.live_metrics import metrics_path, stored_series
from maquette.monitoring.verdicts import ABSOLUTE
from maquette.window_spec import parse_window

# The metric shown first per task (others: ?metric=...).
HEADLINE = {"regression": "rmse", "binary": "auc"}


@dataclass
class LivePage:
    name: str
    window: str
    windows: list[str]
    metric: str
    metrics: list[str]
    threshold: float | None
    series: pd.DataFrame | None
    stored_at: dt.datetime | None
    alerts: list[incidents.Incident]
    reports: list[drift.WindowReport]
    skews: list[skew.SkewWindow]
    accuracy_chart: dict[str, Any] | None
    coverage_chart: dict[str, Any] | None


def live_page(settings: Settings, name: str, task: str, window: str, metric: str) -> LivePage:
    watch = settings.monitoring_of(name)
    # Canonical names ("1d" is "daily"), as the passes name the files they store.
    named = [parse_window(w).name for w in settings.monitoring.windows]
    windows = list(dict.fromkeys([watch.alert_window.name, *named]))
    window = window if window in windows else windows[0]
    series = stored_series(settings, name, window)
    metrics = [
        c
        for c in (series.columns if series is not None else [])
        if c in ABSOLUTE or c in ("rmsle", "brier", "f1", "precision", "recall")
    ]
    metric = metric if metric in metrics else HEADLINE.get(task, metrics[0] if metrics else "")
    threshold = None
    if metric in ABSOLUTE:
        threshold = getattr(watch.thresholds, ABSOLUTE[metric][0])
    alerts = [i for i in incidents.load(settings) if i.model == name and i.kind == "accuracy"]
    stored_at = None
    path = metrics_path(settings, name, window)
    if path.is_file():
        stored_at = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    return LivePage(
        name,
        window,
        windows,
        metric,
        metrics,
        threshold,
        series,
        stored_at,
        alerts,
        drift.load_index(settings, name),
        skew.stored_skew(settings, name, watch.alert_window.name),
        _accuracy_chart(name, series, metric, threshold, alerts) if series is not None else None,
        _coverage_chart(series) if series is not None else None,
    )


def _accuracy_chart(
    name: str,
    series: pd.DataFrame,
    metric: str,
    threshold: float | None,
    alerts: list[incidents.Incident],
) -> dict[str, Any]:
    traces: list[dict[str, Any]] = []
    for (version, partition), rows in series.groupby(["version", "partition"], sort=True):
        rows = rows[rows["enough_labels"]]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{version} {partition}",
                "x": [t.isoformat() for t in rows["window_start"]],
                "y": [None if pd.isna(v) else float(v) for v in rows[metric]],
                # A click on a point opens the version's record.
                "customdata": [f"/models/{name}/{version}"] * len(rows),
                "visible": True if partition == "all" else "legendonly",
            }
        )
    # Breaching windows, per partition (an incident's subject), shown with that partition; a
    # red point opens the record of the version that served the window (the alert is listed
    # under the chart).
    served = {
        (start.isoformat(), partition): version
        for start, partition, version in zip(
            series["window_start"], series["partition"], series["version"], strict=True
        )
    }
    marks: dict[str, list[tuple[str, float, str]]] = {}
    for incident in alerts:
        for w in incident.windows:
            value = w.get("values", {}).get(metric)
            if isinstance(value, int | float):
                marks.setdefault(incident.subject, []).append((w["start"], value, incident.id))
    for subject, found in sorted(marks.items()):
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "alert" if subject == "all" else f"alert {subject}",
                "marker": {"color": "#b42318", "size": 13, "symbol": "x"},
                "x": [m[0] for m in found],
                "y": [m[1] for m in found],
                "text": [m[2] for m in found],
                "customdata": [
                    f"/models/{name}/{served[(m[0], subject)]}"
                    if (m[0], subject) in served
                    else f"/alerts#{m[2]}"
                    for m in found
                ],
                "visible": True if subject == "all" else "legendonly",
            }
        )
    layout: dict[str, Any] = {
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "height": 380,
        "title": {"text": f"{metric} per window (labelled predictions; a click opens the version)"},
        "hovermode": "closest",
        "yaxis": {"title": {"text": metric}},
    }
    if threshold is not None:
        layout["shapes"] = [
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": threshold,
                "y1": threshold,
                "line": {"color": "#b42318", "dash": "dash"},
            }
        ]
        layout["annotations"] = [
            {
                "xref": "paper",
                "x": 1,
                "y": threshold,
                "text": f"alert threshold {threshold:g}",
                "showarrow": False,
                "yshift": 10,
                "xanchor": "right",
            }
        ]
    return {"data": traces, "layout": layout}


def _coverage_chart(series: pd.DataFrame) -> dict[str, Any]:
    overall = series[series["partition"] == "all"]
    traces: list[dict[str, Any]] = []
    for version, rows in overall.groupby("version", sort=True):
        x = [t.isoformat() for t in rows["window_start"]]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"{version} label coverage",
                "x": x,
                "y": [float(v) for v in rows["label_coverage"]],
            }
        )
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"{version} missing features",
                "x": x,
                "y": [float(v) for v in rows["missing_feature_rate"]],
                "line": {"dash": "dot"},
            }
        )
    return {
        "data": traces,
        "layout": {
            "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
            "height": 300,
            "title": {"text": "Label coverage and predictions with a missing feature"},
            "yaxis": {"tickformat": ".0%", "range": [0, 1.05]},
        },
    }
