"""Verdicts: every detector's judged windows, each a breach, clear, or not enough data.

A verdict is about one (kind, model, subject) and one window. Only complete windows are
judged: an open window can still change, so it is shown on the index page but never alarms.
A window with too few rows (or labels) is "not enough data", which never opens nor resolves an
incident. A breach carries a `Finding`: the affected columns, their values and limits, a
severity and a message saying what, where, how much, and what to do.

Kinds and their subjects: `accuracy` (partition value or "all"), `missing_features`, `drift`
and `skew` ("all"), `freshness` (a feature view; no model). `incidents.update` turns the
verdicts into incidents.

Severity, one rule for every check: a finding is critical when its value is at least twice as
far from its baseline as the limit allows (baseline: 0 for rates, shares and absolute error
limits; the test value for `worse_than_test`; the training null rate for missing features; a
perfect score of 1 for `r2_below` and `auc_below`; for freshness, an age of twice the TTL or no
value at all). Otherwise it is a warning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd

from maquette import registry
from maquette.config import Settings
from maquette.model_spec import AlertThresholds
from maquette.monitoring.missing_baseline import MissingHistory
from maquette.version_record import VersionRecord
from maquette.window_spec import parse_duration

BREACH = "breach"
CLEAR = "clear"
NOT_ENOUGH = "not enough data"
Severity = Literal["warning", "critical"]
# Accuracy metric column -> (threshold field, breach when the value is above?). The baseline
# of the severity rule: 0 for errors, 1 (a perfect score) for R² and AUC.
ABSOLUTE = {
    "rmse": ("rmse_above", True),
    "mae": ("mae_above", True),
    "r2": ("r2_below", False),
    "auc": ("auc_below", False),
    "log_loss": ("log_loss_above", True),
}
# The metric `worse_than_test` compares with the version's test value, per task.
PRIMARY = {"regression": "rmse", "binary": "log_loss"}
# The column of `missing_feature_rate_above`: predictions with any missing or stale feature.
ANY_FEATURE = "any feature"


@dataclass
class Finding:
    """What a breaching window showed."""

    columns: list[str]  # metrics (accuracy), features, or a view's features (freshness)
    values: dict[str, float]
    limits: dict[str, float]
    severity: Severity
    message: str


@dataclass
class Verdict:
    """The judgement of one window for one (kind, model, subject)."""

    kind: str  # accuracy | missing_features | drift | skew | freshness
    model: str | None
    subject: str
    window_start: str  # ISO 8601, UTC
    window_end: str
    status: str  # breach | clear | not enough data
    finding: Finding | None = None
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the version, row counts

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.kind, self.model, self.subject)


def iso(value: Any) -> str:
    """A window boundary as ISO 8601 in UTC (datetimes, pandas times or ISO text)."""
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return str(stamp.isoformat())


def _critical(value: float, limit: float, base: float) -> bool:
    return abs(value - base) >= 2 * abs(limit - base)


def _severity(critical: bool) -> Severity:
    return "critical" if critical else "warning"


def _when(start: Any, end: Any) -> str:
    return f"{pd.Timestamp(start):%Y-%m-%d %H:%M} to {pd.Timestamp(end):%Y-%m-%d %H:%M} UTC"


def _verdict(kind: str, name: str | None, subject: str, row: dict[str, Any]) -> Verdict:
    return Verdict(kind, name, subject, iso(row["window_start"]), iso(row["window_end"]), CLEAR)


def accuracy_verdicts(
    settings: Settings, name: str, series: pd.DataFrame, as_of: datetime | None = None
) -> list[Verdict]:
    """Per complete window of the live metrics (alert window): thresholds on labelled rows.

    A window with fewer than `min_labelled` labels waits for late labels until `label_wait`
    after its end (no verdict yet); after that it is final as not enough data.
    """
    limits = settings.monitoring_of(name).thresholds
    if not _accuracy_checked(limits):
        return []
    now = as_of or datetime.now(UTC)
    wait = parse_duration(settings.monitoring.label_wait)
    records: dict[str, VersionRecord] = {}
    out = []
    for row in series.to_dict("records"):
        if not row["complete"]:
            continue
        verdict = _verdict("accuracy", name, str(row["partition"]), row)
        verdict.details = {"version": str(row["version"]), "labelled": int(row["labelled"])}
        if not row["enough_labels"]:
            if pd.Timestamp(row["window_end"]) + wait > pd.Timestamp(now):
                continue  # labels may still come: judged again at a later pass
            verdict.status = NOT_ENOUGH
        else:
            version = str(row["version"])
            if version not in records:
                records[version] = registry.resolve(settings, f"{name}:{version}").record
            verdict.finding = accuracy_finding(name, row, limits, records[version])
            verdict.status = BREACH if verdict.finding else CLEAR
        out.append(verdict)
    return out


def _accuracy_checked(limits: AlertThresholds) -> bool:
    fields = [f for f, _ in ABSOLUTE.values()] + ["worse_than_test", "bias_above"]
    return any(getattr(limits, f) is not None for f in fields)


def tested_value(record: VersionRecord, partition: str, metric: str) -> float | None:
    """The version's test value of `metric` on `partition` (its overall value if none)."""
    test = record.metrics.test
    parts = test.partitions or {}
    scores = parts[partition].model if partition in parts else test.model
    value = scores.get(metric)
    return None if value is None or not math.isfinite(value) else float(value)


def accuracy_finding(
    name: str, row: dict[str, Any], limits: AlertThresholds, record: VersionRecord
) -> Finding | None:
    """The breached accuracy checks of one window, or None when every check holds."""
    values: dict[str, float] = {}
    bounds: dict[str, float] = {}
    said: list[str] = []
    critical = False

    def breach(column: str, value: float, limit: float, base: float, text: str) -> None:
        nonlocal critical
        values[column] = value
        bounds.setdefault(column, limit)
        said.append(text)
        critical = critical or _critical(value, limit, base)

    for metric, (field_name, above) in ABSOLUTE.items():
        limit, value = getattr(limits, field_name), _number(row.get(metric))
        if limit is None or value is None:
            continue
        if (value > limit) if above else (value < limit):
            word = "above" if above else "below"
            breach(
                metric,
                value,
                limit,
                0.0 if above else 1.0,
                f"{metric} {value:.4g} {word} {limit:g}",
            )
    primary = PRIMARY.get(record.task)
    value = _number(row.get(primary)) if primary else None
    if limits.worse_than_test is not None and primary and value is not None:
        test = tested_value(record, str(row["partition"]), primary)
        if test is not None and test > 0 and value > test * (1 + limits.worse_than_test):
            limit = test * (1 + limits.worse_than_test)
            breach(
                primary,
                value,
                limit,
                test,
                f"{primary} {value:.4g} is {value / test - 1:.0%} worse than the test "
                f"{primary} {test:.4g} of {name}:{record.version} (limit "
                f"+{limits.worse_than_test:.0%})",
            )
    bias = _number(row.get("bias"))
    if limits.bias_above is not None and bias is not None and abs(bias) > limits.bias_above:
        breach(
            "bias",
            abs(bias),
            limits.bias_above,
            0.0,
            f"mean(prediction - label) {bias:+.4g}, beyond ±{limits.bias_above:g}",
        )
    if not values:
        return None
    where = "all predictions" if row["partition"] == "all" else f"partition {row['partition']}"
    message = (
        f"{name}:{row['version']} on {where}, {row['window']} window "
        f"{_when(row['window_start'], row['window_end'])}: {'; '.join(said)} "
        f"({int(row['labelled']):,} labelled predictions). Look at what changed in this "
        f"window (`maquette monitor metrics {name}`, the monitoring index); if the data moved "
        f"for good, train a new version (`maquette train {name}`)."
    )
    return Finding(sorted(values), values, bounds, _severity(critical), message)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def missing_verdicts(
    settings: Settings, name: str, missing: pd.DataFrame, history: pd.DataFrame | None = None
) -> list[Verdict]:
    """Per complete window: features missing or stale more often than usual.

    `missing` is `live_metrics.feature_missing`'s frame: one row per (window, feature);
    `history` is `missing_baseline.split_history`'s: the split rows' windows before serving.
    Windows are judged in order, each against the windows before it (`missing_baseline`).
    """
    limits = settings.monitoring_of(name).thresholds
    limit = limits.missing_rate_increase_above
    if limit is None or missing.empty:
        return []
    trailing = parse_duration(settings.monitoring.reference_trailing)
    out = []
    for version, windows in missing[missing["complete"]].groupby("version", sort=True):
        trained = windows.groupby("feature")["training_rate"].first().fillna(0.0)
        seen = MissingHistory(trailing, {f: float(r) for f, r in trained.items()})
        if history is not None:
            for row in history[history["version"] == version].itertuples():
                seen.add(str(row.feature), row.window_end, float(row.missing_rate))
        for (start, end), rows in windows.groupby(["window_start", "window_end"], sort=True):
            out.append(_missing_window(name, str(version), start, end, rows, seen, limit, limits))
    return out


def _missing_window(
    name: str,
    version: str,
    start: Any,
    end: Any,
    rows: pd.DataFrame,
    seen: MissingHistory,
    limit: float,
    limits: AlertThresholds,
) -> Verdict:
    first = rows.iloc[0].to_dict()
    verdict = _verdict("missing_features", name, "all", first)
    predictions = int(first["predictions"])
    verdict.details = {"version": version, "predictions": predictions}
    if predictions < limits.min_rows:
        verdict.status = NOT_ENOUGH
        return verdict
    rates = rows.set_index("feature")["missing_rate"].astype(float)
    usual = {f: seen.usual(str(f), start) for f in rates.index}
    # Above the usual share by the limit, above every earlier window's (when there are enough
    # of them), and beyond chance: a binomial z-score of the window's count against the usual
    # share (a day of 200 predictions moves a 10% rate by +-2% by chance alone).
    over = sorted(
        f
        for f in rates.index
        if rates[f] - usual[f].rate > limit
        and (not usual[f].windows or rates[f] > usual[f].highest)
        and _z_above(rates[f], usual[f].rate, predictions) > MISSING_Z
    )
    for f in rates.index:
        if f not in over:  # a breaching window never becomes the usual
            seen.add(str(f), end, float(rates[f]))
    if over:
        verdict.status = BREACH
        worst = max(rates[f] - usual[f].rate for f in over)
        listed = ", ".join(
            f"{f} {rates[f]:.1%} ({usual[f].describe()})"
            for f in sorted(over, key=lambda f: usual[f].rate - rates[f])
        )
        verdict.finding = Finding(
            over,
            {f: float(rates[f]) for f in over},
            {f: float(usual[f].rate + limit) for f in over},
            _severity(worst >= 2 * limit),
            f"{name}:{version}, {first['window']} window {_when(start, end)}: features "
            f"missing or stale in more predictions than usual (by more than {limit:.0%}): "
            f"{listed}, of {predictions:,} predictions. Check that their feature views are "
            "materialized and their sources complete "
            "(`maquette features get`, `maquette features materialize`).",
        )
    return verdict


# A feature's missing rate must be this many standard errors above its training rate.
MISSING_Z = 3.0


def _z_above(rate: float, base: float, n: int) -> float:
    """How many binomial standard errors `rate` (of n) lies above `base`."""
    floor = 1.0 / max(n, 1)  # a feature never null in training still varies by one row
    p = min(max(base, floor), 1 - floor)
    return (rate - base) / math.sqrt(p * (1 - p) / max(n, 1))


def missing_share_verdicts(settings: Settings, name: str, series: pd.DataFrame) -> list[Verdict]:
    """Per complete window: share of predictions with any missing or stale feature.

    `missing_feature_rate_above` keeps its meaning beside the per-feature check; both are the
    `missing_features` kind, so one incident lists what either found (column `any feature`).
    """
    limits = settings.monitoring_of(name).thresholds
    limit = limits.missing_feature_rate_above
    if limit is None or series.empty:
        return []
    out = []
    overall = series[(series["partition"] == "all") & series["complete"]]
    for row in overall.to_dict("records"):
        verdict = _verdict("missing_features", name, "all", row)
        verdict.details = {"version": str(row["version"]), "predictions": row["predictions"]}
        rate = float(row["missing_feature_rate"])
        if int(row["predictions"]) < limits.min_rows:
            verdict.status = NOT_ENOUGH
        elif rate > limit:
            verdict.status = BREACH
            verdict.finding = Finding(
                [ANY_FEATURE],
                {ANY_FEATURE: rate},
                {ANY_FEATURE: limit},
                _severity(_critical(rate, limit, 0.0)),
                f"{name}:{row['version']}, {row['window']} window "
                f"{_when(row['window_start'], row['window_end'])}: {rate:.1%} of "
                f"{int(row['predictions']):,} predictions had a missing or stale feature (limit "
                f"{limit:.1%}). The monitoring index lists which features; check their views' "
                "materialization and sources (`maquette features materialize`).",
            )
        out.append(verdict)
    return out


def drift_verdicts(settings: Settings, name: str, reports: Iterable[Any]) -> list[Verdict]:
    """Per complete drift window report: share of drifted features above the limit."""
    limits = settings.monitoring_of(name).thresholds
    limit = limits.drift_share_above
    if limit is None:
        return []
    out = []
    for r in reports:
        if not r.complete:
            continue
        verdict = Verdict("drift", name, "all", iso(r.window_start), iso(r.window_end), CLEAR, None)
        verdict.details = {"version": r.version, "rows": r.rows, "report": r.html}
        if not r.enough:
            verdict.status = NOT_ENOUGH
        elif r.drift_share > limit:
            verdict.status = BREACH
            drifted = sorted(r.drifted_features)
            reference, note = r.reference, r.reference_note
            verdict.finding = Finding(
                drifted,
                {f: float(r.feature_drift[f]) for f in drifted if f in r.feature_drift},
                {"drift_share": limit},
                _severity(_critical(r.drift_share, limit, 0.0)),
                f"{name}:{r.version}, {r.window} window "
                f"{_when(r.window_start, r.window_end)}: {r.drift_share:.0%} of features "
                f"drifted (limit {limit:.0%}) from the {reference} reference"
                f"{f' ({note})' if note else ''}: {', '.join(drifted)}. Read the report "
                f"({r.html}); if the inputs moved for good, train a new version "
                f"(`maquette train {name}`).",
            )
        out.append(verdict)
    return out


def skew_verdicts(settings: Settings, name: str, windows: Iterable[Any]) -> list[Verdict]:
    """Per complete alert window: features served differently from the offline recomputation."""
    limits = settings.monitoring_of(name).thresholds
    limit = limits.skew_rate_above
    if limit is None:
        return []
    out = []
    for w in windows:
        if not w.complete:
            continue
        verdict = Verdict("skew", name, "all", iso(w.window_start), iso(w.window_end), CLEAR)
        verdict.details = {"version": w.version, "rows": w.rows}
        if not w.enough:
            verdict.status = NOT_ENOUGH
            out.append(verdict)
            continue
        over = sorted(f for f, rate in w.mismatch_rate.items() if rate > limit)
        if over:
            verdict.status = BREACH
            example = next((w.examples[f][0] for f in over if w.examples.get(f)), None)
            verdict.finding = Finding(
                over,
                {f: float(w.mismatch_rate[f]) for f in over},
                dict.fromkeys(over, limit),
                _severity(max(w.mismatch_rate[f] for f in over) >= 2 * limit),
                f"{name}:{w.version}, window {_when(w.window_start, w.window_end)}: "
                "served values differ from the offline point-in-time recomputation in "
                + ", ".join(f"{f} {w.mismatch_rate[f]:.1%}" for f in over)
                + f" of {w.rows:,} sampled predictions (limit {limit:.1%})"
                + (
                    f"; e.g. served {example['served']!r}, offline {example['offline']!r}"
                    if example
                    else ""
                )
                + ". The online and offline paths of these features disagree: check their "
                "pipelines, units and materialization (`maquette features get`).",
            )
        out.append(verdict)
    return out


def freshness_verdicts(views: Iterable[Any], as_of: datetime) -> list[Verdict]:
    """Per feature view, at this pass: stale (newest value older than its TTL) or fresh.

    The window runs from the view's newest value to the pass, so one stale spell whose newest
    value does not move stays one growing window of its incident.
    """
    out = []
    end = iso(as_of)
    for f in views:
        start = iso(f.newest) if f.newest is not None else end
        verdict = Verdict("freshness", None, f.view, start, end, CLEAR)
        if f.stale:
            verdict.status = BREACH
            columns = sorted(f.features or [f.view])
            age = f.age_s if f.age_s is not None else math.inf
            ttl = f.ttl_s or 0.0
            message = (
                f"feature view {f.view} has no values in the online store; materialize it "
                "(`maquette features materialize`)."
                if f.newest is None
                else f"feature view {f.view}: newest value in the online store is "
                f"{_duration(age)} old, older than its TTL of {_duration(ttl)}, so its "
                "features are served as missing. Materialization or its source is late: "
                "check the materialize flow and the source (`maquette features materialize`)."
            )
            verdict.finding = Finding(
                columns,
                # No value at all has no age: JSON (the store, the webhook) has no infinity.
                dict.fromkeys(columns, f.age_s if f.age_s is not None else -1.0),
                dict.fromkeys(columns, ttl),
                _severity(f.newest is None or age >= 2 * ttl),
                message,
            )
        out.append(verdict)
    return out


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"
