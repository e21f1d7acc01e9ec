"""The monitoring index page, `reports/monitoring/index.html`: one page a person opens first.

Incidents (open ones first, then resolved), the freshness of every feature view in the online
store, and per model the live metrics chart, the Evidently reports of every window and the skew
table. The
page is plain HTML with plotly charts (the plotly library inlined once, so it works offline).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.io import to_html

esc = html.escape

_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<title>Maquette monitoring</title><style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}
table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
</style></head><body>{body}</body></html>"""


def write_monitoring_index(run: Any) -> Path:
    """Write `run.index` for a monitoring pass (a `monitor.MonitorRun`); return its path.

    `run` is typed loosely because `monitor` imports this module to write the page at the end
    of its pass; the page reads only the pass's fields.
    """
    target: Path = run.index
    target.parent.mkdir(parents=True, exist_ok=True)
    sections = [
        _model_section(name, found, target.parent, include_plotlyjs=(i == 0))
        for i, (name, found) in enumerate(run.models.items())
    ]
    fresh_rows = [
        [
            esc(f.view),
            "no limit" if f.ttl_s is None else f"{f.ttl_s / 3600:g} h",
            esc(f.newest.isoformat() if f.newest else "nothing stored"),
            "" if f.age_s is None else f"{f.age_s / 3600:.1f} h",
            "STALE" if f.stale else "fresh",
        ]
        for f in run.freshness
    ]
    skipped = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in run.skipped.items())
    body = f"""<h1>Maquette monitoring</h1>
<p>As of {esc(run.as_of.isoformat())}; {run.drained:,} predictions drained in this run.
Evidently UI: <code>evidently ui --workspace {esc(str(run.workspace))}</code></p>
{f"<ul>{skipped}</ul>" if skipped else ""}
<h2>Incidents</h2>
{_incidents_section(run)}
<h2>Feature freshness (online store)</h2>
{_raw_table(fresh_rows, ["feature view", "TTL", "newest event", "age", "status"])}
{"".join(sections)}"""
    target.write_text(_PAGE.format(body=body))
    return target


INCIDENT_HEADER = [
    "incident",
    "kind",
    "model",
    "subject",
    "severity",
    "since",
    "columns",
    "windows",
    "what",
]


def _incidents_section(run: Any) -> str:
    """Open incidents first (newest first), then the resolved ones (newest first)."""
    opened = {i.id for i in run.incidents_opened}
    current = [i for i in reversed(run.incidents) if i.status == "open"]
    done = [i for i in reversed(run.incidents) if i.status == "resolved"][:200]
    parts = [
        f"<h3>Open ({len(current)})</h3>",
        _raw_table([_incident_row(i, i.id in opened) for i in current], INCIDENT_HEADER)
        if current
        else "<p>No open incidents.</p>",
    ]
    if done:
        header = [*INCIDENT_HEADER[:6], "resolved", *INCIDENT_HEADER[6:]]
        rows = [_incident_row(i, False, resolved=True) for i in done]
        parts += [f"<h3>Resolved ({len(done)})</h3>", _raw_table(rows, header)]
    return "\n".join(parts)


def _incident_row(incident: Any, new: bool, resolved: bool = False) -> list[str]:
    windows = incident.windows
    span = f"{len(windows)}: {windows[0]['start'][:16]} → {windows[-1]['end'][:16]}"
    severity = esc(incident.severity)
    if incident.severity == "critical":
        severity = f"<b style='color:#b00'>{severity}</b>"
    row = [
        esc(incident.id) + (" <b>new</b>" if new else ""),
        esc(incident.kind),
        esc(incident.model or "-"),
        esc(incident.subject),
        severity,
        esc(incident.opened_at[:16]),
    ]
    if resolved:
        row.append(esc((incident.resolved_at or "")[:16]))
    return [
        *row,
        esc(", ".join(incident.columns)),
        esc(span),
        esc(incident.message).replace("\n", "<br>"),
    ]


def _model_section(name: str, found: Any, folder: Path, include_plotlyjs: bool) -> str:
    """One model's part of the page: chart, Evidently reports per window, skew."""
    series = found.metrics[found.alert_window]
    task = "regression" if "rmse" in series else "binary"
    chart = to_html(
        _metric_chart(name, task, series), full_html=False, include_plotlyjs=include_plotlyjs
    )
    quality_key = "rmse" if task == "regression" else "auc"
    header = [
        "window",
        "complete",
        "reference",
        "rows",
        "labelled",
        "drift share",
        "drifted features",
        "prediction drift",
        quality_key.upper(),
    ]
    skew_rows = [
        [
            esc(f"{str(s.window_start)[:16]}{'' if s.complete else ' (open)'}"),
            esc(str(s.version)),
            f"{s.rows:,}",
            esc(feature),
            f"{rate:.2%}",
            esc(json.dumps(s.examples.get(feature, [])[:1], default=str)),
        ]
        for s in found.skew[-30:]
        for feature, rate in sorted(s.mismatch_rate.items(), key=lambda kv: -kv[1])[:5]
        if rate > 0
    ]
    no_skew = f"<p>No mismatch in the last {min(len(found.skew), 30)} windows sampled.</p>"
    return f"""
<h2>{esc(name)}</h2>
<p>{found.predictions:,} logged predictions, {found.labelled:,} with labels
({found.labelled / max(found.predictions, 1):.0%}).</p>
{chart}
<h3>Evidently reports (drift vs the reference; quality on labelled rows)</h3>
{_raw_table(_report_rows(found.reports, folder, quality_key), header)}
<p>{esc(found.reports[-1].note) if found.reports else ""}</p>
<h3>Training/serving skew (served vs recomputed offline, point in time, per {esc(found.alert_window)} window)</h3>
{_raw_table(skew_rows, ["window", "version", "sampled", "feature", "mismatch", "example"]) if skew_rows else no_skew}"""


def _report_rows(reports: list[Any], folder: Path, quality_key: str) -> list[list[str]]:
    """A row per Evidently window report, linked relative to the index page's folder."""

    def link(path: str) -> str:
        return esc(Path(path).relative_to(folder).as_posix())

    return [
        [
            f'<a href="{link(r.html)}">{esc(str(r.window_start)[:16])}</a>',
            "yes" if r.complete else "open",
            esc(r.reference_note or r.reference),
            f"{r.rows:,}" + (f" (sampled {r.sampled_rows:,})" if r.sampled_rows < r.rows else ""),
            f"{r.labelled:,}",
            f"{r.drift_share:.0%}",
            esc(", ".join(r.drifted_features) or "none"),
            "" if r.prediction_drift is None else f"{r.prediction_drift:.3f}",
            "no labels yet"
            if not r.quality
            else f'<a href="{link(r.quality_html)}">'
            f"{r.quality.get(quality_key, float('nan')):.4g}</a>",
        ]
        for r in reports
    ]


def _metric_chart(name: str, task: str, series: pd.DataFrame) -> go.Figure:
    metric = "rmse" if task == "regression" else "auc"
    fig = go.Figure()
    for (version, partition), rows in series.groupby(["version", "partition"]):
        fig.add_scatter(
            x=rows["window_start"],
            y=rows.get(metric),
            mode="lines+markers",
            name=f"{version} {partition}",
        )
    fig.update_layout(
        title=f"{name}: live {metric.upper()} per {series['window'].iloc[0]} window",
        height=360,
        margin={"t": 40, "b": 30},
    )
    return fig


def _raw_table(rows: list[list[str]], header: list[str]) -> str:
    """A table of cells that are already HTML (escaped by the caller)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
