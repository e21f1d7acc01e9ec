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

from maquette.training.metrics import HIGHER_IS_BETTER
from maquette.training.model_types import LABEL, TrainedModel, TrainingData
from maquette.version_record import VersionRecord


def _table(rows: list[list[Any]], header: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.4f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(record: VersionRecord, data: TrainingData, model: TrainedModel) -> list[go.Figure]:
    test = data.frames["test"]
    pred, _ = model.predict(test)
    y = test[LABEL].to_numpy(dtype=float)
    top = list(record.importance.items())[:20]
    figures = [
        _trials_figure(record),
        go.Figure(
            go.Bar(x=[v for _, v in top][::-1], y=[k for k, _ in top][::-1], orientation="h"),
            layout={"title": "Feature importance (share of gain)", "height": 520},
        ),
    ]
    if model.task == "regression":
        figures += _regression_figures(y, pred)
    else:
        figures += _binary_figures(record, model, y, pred)
    return figures + _partial_dependence_figures(record)


def _trials_figure(record: VersionRecord) -> go.Figure:
    """Each trial's validation score in the order tried, pruned ones apart, and the best so
    far: how the search converged (a tuned search should find its best sooner)."""
    search = record.search
    done = [t for t in search.trials if not t.pruned]
    pruned = [t for t in search.trials if t.pruned]
    higher = HIGHER_IS_BETTER.get(search.metric, False)
    best_so_far, best = [], None
    for t in done:
        best = t.score if best is None or (t.score > best if higher else t.score < best) else best
        best_so_far.append(best)
    traces = [
        go.Scatter(
            x=[t.number for t in done], y=[t.score for t in done], mode="markers", name="trial"
        ),
        go.Scatter(x=[t.number for t in done], y=best_so_far, mode="lines", name="best so far"),
    ]
    if pruned:
        traces.append(
            go.Scatter(
                x=[t.number for t in pruned],
                y=[t.score for t in pruned],
                mode="markers",
                marker={"symbol": "x", "color": "#999"},
                name="pruned (score where it stopped)",
            )
        )
    return go.Figure(
        traces,
        layout={
            "title": f"Search trials ({search.method}): {search.metric} on validation",
            "xaxis_title": "trial",
            "yaxis_title": search.metric,
            "height": 360,
        },
    )


def _regression_figures(y: np.ndarray, pred: np.ndarray) -> list[go.Figure]:
    figures = []
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
    return figures


def _binary_figures(
    record: VersionRecord, model: TrainedModel, y: np.ndarray, pred: np.ndarray
) -> list[go.Figure]:
    figures = []
    fpr, tpr, _ = skm.roc_curve(y, pred)
    precision, recall, _ = skm.precision_recall_curve(y, pred)
    figures.append(
        go.Figure(
            go.Scatter(x=fpr, y=tpr),
            layout={
                "title": f"ROC (AUC {record.metrics.test.model['auc']:.3f})",
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
    c = record.metrics.test.model["confusion"]
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
    figures.append(_calibration_figure(record.metrics.test.model["calibration"]))
    return figures


def _calibration_figure(cal: list[dict[str, Any]]) -> go.Figure:
    return go.Figure(
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


def _partial_dependence_figures(record: VersionRecord) -> list[go.Figure]:
    figures = []
    for feature, pd_curve in record.partial_dependence.items():
        figures.append(
            go.Figure(
                go.Scatter(x=pd_curve.grid, y=pd_curve.average_prediction, mode="lines+markers"),
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
    folder: Path, record: VersionRecord, data: TrainingData, model: TrainedModel
) -> Path:
    """Write report.html and evidently.html into the version's folder; return report.html."""
    charts = "".join(
        to_html(f, full_html=False, include_plotlyjs=(i == 0))
        for i, f in enumerate(_figures(record, data, model))
    )
    body = _report_body(record, charts)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(record.name)}
{html.escape(record.version)}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}
table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
</style></head><body>{body}</body></html>"""
    report = folder / "report.html"
    report.write_text(page)
    _write_evidently(folder / "evidently.html", data, model)
    return report


def _report_body(record: VersionRecord, charts: str) -> str:
    """The report page's body: who and when, metrics vs baseline, partitions, search, charts."""
    test = record.metrics.test
    metric_rows = [
        [k, v, test.baseline.get(k)]
        for k, v in test.model.items()
        if isinstance(v, int | float) and k != "rows"
    ]
    partitions = _partition_rows(record)
    trials = [
        [
            t.number,
            t.score,
            t.best_iteration,
            "pruned" if t.pruned else "",
            json.dumps(t.params, default=str),
        ]
        for t in record.search.trials
    ]
    who = record.trained_by
    return f"""
<h1>{html.escape(record.name)}:{html.escape(record.version)}</h1>
<p>{html.escape(record.task)} with {html.escape(record.algorithm)} on feature service
<b>{html.escape(record.feature_service)}</b>; trained by {html.escape(who.user)}@{
        html.escape(who.host)
    }
from {html.escape(record.started_at)} to {html.escape(record.ended_at)}; code
{
        html.escape(str(record.code_version.git_commit))
    }. <a href="evidently.html">Evidently report</a></p>
<h2>Test window: model vs naive baseline</h2>
<p>{html.escape(record.baseline.description)}. {html.escape(record.baseline.gain)}</p>
{_table(metric_rows, ["metric", "model", "baseline"])}
<h2>Partitions ({html.escape(str(record.spec.partition_by))})</h2>
{
        _table(
            partitions,
            ["partition", "train rows", "validation rows", "own", "parent", "serves", "why"],
        )
        if partitions
        else "<p>No partitioning.</p>"
    }
<h2>Search ({html.escape(record.search.method)}, {
        html.escape(record.search.metric)
    } on validation)</h2>
{_table(trials, ["trial", "score", "best iteration", "stopped", "params"])}
<h2>Charts</h2>{charts}
"""


def _partition_rows(record: VersionRecord) -> list[list[Any]]:
    """A row per partition decision: rows, scores, which model serves it, and why."""
    return [
        [
            d.partition,
            d.train_rows,
            d.validation_rows,
            "" if d.own is None else d.own,
            "" if d.parent is None else d.parent,
            "own model" if d.kept else "parent",
            d.reason,
        ]
        for d in record.partitions
    ]


def _write_evidently(path: Path, data: TrainingData, model: TrainedModel) -> None:
    # Imported here for start-up time: Evidently takes seconds to import.
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
