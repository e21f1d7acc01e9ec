"""Model reports: one self-contained HTML page per version, plus Evidently's preset report.

`report.html` shows the record a person looks at first: test metrics next to the naive
baseline, the partition decisions, the search trials, feature importance and partial
dependence, and the standard charts (predicted vs actual and residuals for regression; ROC,
precision-recall, confusion matrix and calibration for binary). Charts are plotly, with the
plotly library inlined once so the page works offline. `evidently.html` is Evidently's
Regression/Classification preset on the test window, with validation as the reference.
"""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.io import to_html
from sklearn import metrics as skm

from maquette.training.pipeline import LABEL, TrainedModel, TrainingData


def _table(rows: list[list[Any]], header: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.4f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(record: dict[str, Any], data: TrainingData, model: TrainedModel) -> list[go.Figure]:
    test = data.frames["test"]
    pred, _ = model.predict(test)
    y = test[LABEL].to_numpy(dtype=float)
    figures = []
    top = list(record["importance"].items())[:20]
    figures.append(
        go.Figure(
            go.Bar(x=[v for _, v in top][::-1], y=[k for k, _ in top][::-1], orientation="h"),
            layout={"title": "Feature importance (share of gain)", "height": 520},
        )
    )
    if model.task == "regression":
        idx = np.random.default_rng(0).choice(len(y), size=min(4000, len(y)), replace=False)
        figures.append(
            go.Figure(
                go.Scattergl(x=pred[idx], y=y[idx], mode="markers", opacity=0.35),
                layout={
                    "title": "Predicted vs actual (test sample)",
                    "xaxis_title": "predicted",
                    "yaxis_title": "actual",
                },
            )
        )
        figures.append(
            go.Figure(
                go.Histogram(x=(y - pred), nbinsx=80),
                layout={"title": "Residuals on test (actual - predicted)"},
            )
        )
    else:
        fpr, tpr, _ = skm.roc_curve(y, pred)
        precision, recall, _ = skm.precision_recall_curve(y, pred)
        figures.append(
            go.Figure(
                go.Scatter(x=fpr, y=tpr),
                layout={
                    "title": f"ROC (AUC {record['metrics']['test']['model']['auc']:.3f})",
                    "xaxis_title": "false positive rate",
                    "yaxis_title": "true positive rate",
                },
            )
        )
        figures.append(
            go.Figure(
                go.Scatter(x=recall, y=precision),
                layout={
                    "title": "Precision-recall",
                    "xaxis_title": "recall",
                    "yaxis_title": "precision",
                },
            )
        )
        c = record["metrics"]["test"]["model"]["confusion"]
        figures.append(
            go.Figure(
                go.Heatmap(
                    z=[[c["tn"], c["fp"]], [c["fn"], c["tp"]]],
                    x=["predicted 0", "predicted 1"],
                    y=["actual 0", "actual 1"],
                    text=[[c["tn"], c["fp"]], [c["fn"], c["tp"]]],
                    texttemplate="%{text}",
                ),
                layout={"title": f"Confusion matrix at threshold {model.threshold:.3f}"},
            )
        )
        cal = record["metrics"]["test"]["model"]["calibration"]
        figures.append(
            go.Figure(
                [
                    go.Scatter(
                        x=[b["predicted"] for b in cal],
                        y=[b["observed"] for b in cal],
                        mode="lines+markers",
                        name="model",
                    ),
                    go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect"),
                ],
                layout={
                    "title": "Calibration (test)",
                    "xaxis_title": "predicted probability",
                    "yaxis_title": "observed rate",
                },
            )
        )
    for feature, pd_curve in record["partial_dependence"].items():
        figures.append(
            go.Figure(
                go.Scatter(
                    x=pd_curve["grid"], y=pd_curve["average_prediction"], mode="lines+markers"
                ),
                layout={
                    "title": f"Partial dependence: {feature}",
                    "xaxis_title": feature,
                    "yaxis_title": "average prediction",
                    "height": 360,
                },
            )
        )
    return figures


def write_model_report(
    folder: Path, record: dict[str, Any], data: TrainingData, model: TrainedModel
) -> Path:
    """Write report.html and evidently.html into the version's folder; return report.html."""
    test = record["metrics"]["test"]
    metric_rows = [
        [k, v, test["baseline"].get(k)]
        for k, v in test["model"].items()
        if isinstance(v, int | float) and k != "rows"
    ]
    partitions = [
        [
            d["partition"],
            d["train_rows"],
            d["validation_rows"],
            d.get("own", ""),
            d.get("parent", ""),
            "own model" if d["kept"] else "parent",
            d["reason"],
        ]
        for d in record["partitions"]
    ]
    trials = [
        [t["number"], t["score"], t["best_iteration"], json.dumps(t["params"], default=str)]
        for t in record["search"]["trials"]
    ]
    charts = "".join(
        to_html(f, full_html=False, include_plotlyjs=(i == 0))
        for i, f in enumerate(_figures(record, data, model))
    )
    who = record["trained_by"]
    body = f"""
<h1>{html.escape(record["name"])}:{html.escape(record["version"])}</h1>
<p>{html.escape(record["task"])} with {html.escape(record["algorithm"])} on feature service
<b>{html.escape(record["feature_service"])}</b>; trained by {html.escape(who["user"])}@{
        html.escape(who["host"])
    }
from {html.escape(record["started_at"])} to {html.escape(record["ended_at"])}; code
{
        html.escape(str(record["code_version"].get("git_commit")))
    }. <a href="evidently.html">Evidently report</a></p>
<h2>Test window: model vs naive baseline</h2>
<p>{html.escape(record["baseline"]["description"])}. {html.escape(record["baseline"]["gain"])}</p>
{_table(metric_rows, ["metric", "model", "baseline"])}
<h2>Partitions ({html.escape(str(record["spec"].get("partition_by")))})</h2>
{
        _table(
            partitions,
            ["partition", "train rows", "validation rows", "own", "parent", "serves", "why"],
        )
        if partitions
        else "<p>No partitioning.</p>"
    }
<h2>Search ({html.escape(record["search"]["metric"])} on validation)</h2>
{_table(trials, ["trial", "score", "best iteration", "params"])}
<h2>Charts</h2>{charts}
"""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(record["name"])}
{html.escape(record["version"])}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}
table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
</style></head><body>{body}</body></html>"""
    report = folder / "report.html"
    report.write_text(page)
    _write_evidently(folder / "evidently.html", data, model)
    return report


def _write_evidently(path: Path, data: TrainingData, model: TrainedModel) -> None:
    from evidently import BinaryClassification, DataDefinition, Dataset, Regression, Report
    from evidently.presets import ClassificationPreset, RegressionPreset

    def frame(split: str) -> pd.DataFrame:
        rows = data.frames[split]
        pred, _ = model.predict(rows)
        out = pd.DataFrame({"target": rows[LABEL].to_numpy(dtype=float), "prediction": pred})
        if model.task == "binary":
            out["target"] = out["target"].astype(int)
        return out

    if model.task == "regression":
        definition = DataDefinition(
            regression=[Regression(target="target", prediction="prediction")]
        )
        preset: Any = RegressionPreset()
    else:
        definition = DataDefinition(
            classification=[BinaryClassification(target="target", prediction_probas="prediction")]
        )
        preset = ClassificationPreset()
    current = Dataset.from_pandas(frame("test"), data_definition=definition)
    reference = Dataset.from_pandas(frame("validation"), data_definition=definition)
    with warnings.catch_warnings():
        # Evidently's presets warn about their own internal slices (e.g. R² of one row).
        warnings.simplefilter("ignore")
        Report([preset]).run(current, reference).save_html(str(path))


# ------------------------------------------------------------------------- monitoring index


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


def write_monitoring_index(run: Any) -> Path:
    """`reports/monitoring/index.html`: alerts, freshness, and per model the live metrics chart,
    the Evidently reports of every window, and the skew table."""
    target: Path = run.index
    target.parent.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    sections = []
    first_chart = True
    for name, found in run.models.items():
        daily = next(iter(found.metrics.values()))
        task = "regression" if "rmse" in daily else "binary"
        chart = to_html(
            _metric_chart(name, task, daily), full_html=False, include_plotlyjs=first_chart
        )
        first_chart = False
        quality_key = "rmse" if task == "regression" else "auc"
        report_rows = [
            [
                f'<a href="{esc(Path(r.html).relative_to(target.parent).as_posix())}">'
                f"{esc(r.window_start[:10])}</a>",
                f"{r.rows:,}"
                + (f" (sampled {r.sampled_rows:,})" if r.sampled_rows < r.rows else ""),
                f"{r.labelled:,}",
                f"{r.drift_share:.0%}",
                esc(", ".join(r.drifted_features) or "none"),
                "" if r.prediction_drift is None else f"{r.prediction_drift:.3f}",
                "no labels yet"
                if not r.quality
                else f'<a href="{esc(Path(r.quality_html).relative_to(target.parent).as_posix())}">'
                f"{r.quality.get(quality_key, float('nan')):.4g}</a>",
            ]
            for r in found.reports
        ]
        skew_rows = [
            [
                esc(f"{s.model}:{s.version}"),
                esc(feature),
                f"{rate:.2%}",
                esc(json.dumps(s.examples.get(feature, [])[:1], default=str)),
            ]
            for s in found.skew
            for feature, rate in sorted(s.mismatch_rate.items(), key=lambda kv: -kv[1])
        ]
        sections.append(f"""
<h2>{esc(name)}</h2>
<p>{found.predictions:,} logged predictions, {found.labelled:,} with labels
({found.labelled / max(found.predictions, 1):.0%}).</p>
{chart}
<h3>Evidently reports (drift vs the training reference; quality on labelled rows)</h3>
{
            _raw_table(
                report_rows,
                [
                    "window",
                    "rows",
                    "labelled",
                    "drift share",
                    "drifted features",
                    "prediction drift",
                    quality_key.upper(),
                ],
            )
        }
<p>{esc(found.reports[0].note) if found.reports else ""}</p>
<h3>Training/serving skew (served vs recomputed offline, point in time)</h3>
{_raw_table(skew_rows, ["version", "feature", "mismatch", "example"])}""")
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
    new_keys = {a.key for a in run.new_alerts}
    alert_rows = [
        ["new" if a["key"] in new_keys else "", esc(a["kind"]), esc(a["message"])]
        for a in reversed(run.all_alerts)
    ][:200]
    skipped = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in run.skipped.items())
    body = f"""<h1>Maquette monitoring</h1>
<p>As of {esc(run.as_of.isoformat())}; {run.drained:,} predictions drained in this run.
Evidently UI: <code>evidently ui --workspace {esc(str(run.workspace))}</code></p>
{f"<ul>{skipped}</ul>" if skipped else ""}
<h2>Alerts</h2>
{_raw_table(alert_rows, ["", "kind", "alert"]) if alert_rows else "<p>No alerts.</p>"}
<h2>Feature freshness (online store)</h2>
{_raw_table(fresh_rows, ["feature view", "TTL", "newest event", "age", "status"])}
{"".join(sections)}"""
    target.write_text(f"""<!doctype html><html><head><meta charset="utf-8">
<title>Maquette monitoring</title><style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}
table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
</style></head><body>{body}</body></html>""")
    return target


def _raw_table(rows: list[list[str]], header: list[str]) -> str:
    """A table of cells that are already HTML (escaped by the caller)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
