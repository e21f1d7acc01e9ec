"""Charts of the console as plotly.js figures (plain dicts, drawn in the browser).

plotly.js is served by the console itself from the plotly package (no CDN: the console works
offline); each chart has a table beside it, so a page reads without JavaScript.
"""

from __future__ import annotations

from typing import Any

from maquette.version_record import VersionRecord

LAYOUT = {"margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "height": 320}


def search_trials(record: VersionRecord) -> dict[str, Any]:
    """Validation score of each search trial, the winner marked."""
    trials = record.search.trials
    best = record.search.best_trial
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "markers+lines",
                "name": "trial",
                "x": [t.number for t in trials],
                "y": [t.score for t in trials],
                "text": [", ".join(f"{k}={v}" for k, v in t.params.items()) for t in trials],
            },
            {
                "type": "scatter",
                "mode": "markers",
                "name": "chosen",
                "marker": {"size": 14, "symbol": "star"},
                "x": [t.number for t in trials if t.number == best],
                "y": [t.score for t in trials if t.number == best],
            },
        ],
        "layout": {
            **LAYOUT,
            "title": {"text": f"Search: validation {record.search.metric} per trial"},
            "xaxis": {"title": {"text": "trial"}},
            "yaxis": {"title": {"text": record.search.metric}},
        },
    }


def importance(records: dict[str, VersionRecord]) -> dict[str, Any]:
    """Feature importance (gain share) of one or more versions, as horizontal bars."""
    features = list(dict.fromkeys(f for r in records.values() for f in r.importance))
    first = next(iter(records.values()))
    features.sort(key=lambda f: first.importance.get(f, 0.0))
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "name": tag,
                "y": features,
                "x": [r.importance.get(f, 0.0) for f in features],
            }
            for tag, r in records.items()
        ],
        "layout": {
            **LAYOUT,
            "height": max(320, 18 * len(features) + 80),
            "title": {"text": "Feature importance"},
            "barmode": "group",
            "margin": {**LAYOUT["margin"], "l": 190},  # type: ignore[dict-item]
        },
    }


def histogram_svg(distribution: dict[str, Any], width: int = 140, height: int = 26) -> str:
    """A numeric feature's training histogram as a small inline SVG (drawn without JavaScript)."""
    counts = (distribution.get("histogram") or {}).get("counts") or []
    if not counts or max(counts) <= 0:
        return ""
    top, step = max(counts), width / len(counts)
    bars = "".join(
        f'<rect x="{i * step:.1f}" y="{height - height * c / top:.1f}" width="{max(step - 1, 1):.1f}" '
        f'height="{height * c / top:.1f}"/>'
        for i, c in enumerate(counts)
    )
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="histogram"><g fill="#6172f3">{bars}</g></svg>'
    )


def partial_dependence(record: VersionRecord, feature: str) -> dict[str, Any]:
    """Average prediction along one feature's grid."""
    curve = record.partial_dependence[feature]
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "lines+markers",
                "x": curve.grid,
                "y": curve.average_prediction,
            }
        ],
        "layout": {
            **LAYOUT,
            "height": 260,
            "title": {"text": feature},
            "yaxis": {"title": {"text": "average prediction"}},
        },
    }
