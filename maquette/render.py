"""Rich tables and summaries for the CLI (presentation only, no work)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from maquette.config import Settings
from maquette.data.sources import TableSummary
from maquette.features.layer import FeatureLayer, MaterializeResult
from maquette.platform.demo import DemoReport


def _ts(value: object) -> str:
    return "" if value is None else str(value)[:16]


def tables_table(tables: list[TableSummary]) -> Table:
    table = Table(
        "table", "kind", "rows", "first event", "last event", "path", title="offline store"
    )
    for t in tables:
        table.add_row(
            t.name, t.kind, f"{t.rows:,}", _ts(t.first_event), _ts(t.last_event), str(t.path)
        )
    return table


def materialize_table(result: MaterializeResult) -> Table:
    table = Table(
        "feature view",
        "rows read",
        "rows written",
        title=f"materialized {_ts(result.start)} .. {_ts(result.end)} in {result.seconds:.2f}s",
    )
    for name, read in result.rows_read.items():
        table.add_row(name, f"{read:,}", f"{result.rows_written.get(name, 0):,}")
    return table


def feature_views_table(layer: FeatureLayer) -> Table:
    table = Table("feature view", "entities", "ttl", "features", title="feature views")
    for view in sorted(layer.store.list_feature_views(), key=lambda v: v.name):
        table.add_row(
            view.name,
            ", ".join(view.entities),
            str(view.ttl or "none"),
            ", ".join(f.name for f in view.features),
        )
    for odfv in layer.store.list_on_demand_feature_views():
        table.add_row(odfv.name, "(request data)", "-", ", ".join(f.name for f in odfv.features))
    for service in layer.store.list_feature_services():
        views = ", ".join(p.name for p in service.feature_view_projections)
        table.add_row(f"[bold]service {service.name}[/]", "", "", views)
    return table


def demo_summary(console: Console, report: DemoReport) -> None:
    console.rule("Maquette demo: summary")
    console.print(tables_table(report.tables))
    console.print(f"registered with Feast: {', '.join(report.registered)}")
    if report.materialized:
        console.print(materialize_table(report.materialized))
    console.print(
        f"training frame: {report.training_rows:,} rows x {len(report.training_columns)} "
        f"columns ({report.label_rows:,} with a label)"
    )
    if report.online_sample:
        sample = report.online_sample
        entity = {
            k: report.online_entity.get(k) for k in ("flight_id", "origin", "carrier", "tailnum")
        }
        console.print(f"online features for {entity} as of its departure:")
        table = Table("feature", "value", "status")
        for name in sample.names:
            table.add_row(name, repr(sample.values[0][name]), sample.statuses[0][name])
        console.print(table)
    if report.models:
        models = Table(
            "model@production",
            "test metrics",
            "vs naive baseline",
            "partitions kept",
            "report",
            title="trained and promoted",
        )
        for version in report.models:
            r = version.record
            test = r["metrics"]["test"]["model"]
            shown = ", ".join(
                f"{k} {test[k]:.3f}" for k in ("rmse", "r2", "auc", "f1") if k in test
            )
            kept = ", ".join(d["partition"] for d in r["partitions"] if d["kept"]) or "-"
            models.add_row(version.tag, shown, r["baseline"]["gain"], kept, str(version.report))
        console.print(models)
        console.print("details: maquette models show flight_delay@production")
    if report.traffic:
        _traffic_summary(console, report)
    if report.monitoring:
        _december_summary(console, report.monitoring)
    timing = Table("stage", "seconds", title="stage times")
    for stage, seconds in report.stage_seconds.items():
        timing.add_row(stage, f"{seconds:.2f}")
    timing.add_row("[bold]total[/]", f"{sum(report.stage_seconds.values()):.2f}")
    console.print(timing)
    _where_to_look(console, report)


# ------------------------------------------------------------------------------- models


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}"
    return "" if value is None else str(value)


def _versus_baseline(record: dict[str, Any]) -> str:
    test = record["metrics"]["test"]
    if record["task"] == "regression":
        model, base = test["model"]["rmse"], test["baseline"]["rmse"]
        return f"rmse {100 * (model - base) / base:+.1f}%"
    return f"auc {test['model']['auc'] - test['baseline']['auc']:+.3f}"


def versions_table(settings: Settings, name: str | None) -> Table:
    from maquette import registry

    table = Table(title="model versions")
    table.add_column("version", no_wrap=True, min_width=16)
    for header in ("created", "test metrics", "vs baseline", "aliases"):
        table.add_column(header)
    for v in registry.list_versions(settings, name):
        test = v.record["metrics"]["test"]["model"]
        shown = {k: test[k] for k in ("rmse", "r2", "auc", "f1") if k in test}
        table.add_row(
            v.tag,
            str(v.created)[:16],
            ", ".join(f"{k} {val:.3f}" for k, val in shown.items()),
            _versus_baseline(v.record),
            ", ".join(registry.aliases_of(settings, v)),
        )
    return table


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table(
        "split",
        "who",
        "rows",
        "r2 / auc",
        "rmse / log loss",
        "mae / f1",
        "rmsle / precision",
        "- / recall",
        title=title,
    )
    for split, entry in metrics.items():
        for who in ("model", "baseline"):
            m = entry[who]
            if "rmse" in m:
                cells = [m.get("r2"), m.get("rmse"), m.get("mae"), m.get("rmsle"), None]
            else:
                cells = [
                    m.get("auc"),
                    m.get("log_loss"),
                    m.get("f1"),
                    m.get("precision"),
                    m.get("recall"),
                ]
            table.add_row(split, who, str(m.get("rows")), *(_fmt(c) for c in cells))
    return table


def record_view(console: Console, settings: Settings, version: Any) -> None:
    """Every section of a version's record, as tables."""
    from maquette import registry

    r = version.record
    console.rule(f"{version.tag}  ({r['task']}, {r['algorithm']})")
    who = r["trained_by"]
    console.print(
        f"trained by {who['user']}@{who['host']} from {r['started_at']} to {r['ended_at']} "
        f"({r['seconds']:.1f}s); code {r['code_version']}; aliases: "
        f"{', '.join(registry.aliases_of(settings, version)) or 'none'}"
    )
    console.print("libraries: " + ", ".join(f"{k} {v}" for k, v in r["libraries"].items()))
    console.print(f"spec: {r['spec']}")
    console.print(f"resolved params: {r['params']}")
    trials = Table(
        "trial",
        "score",
        "best iteration",
        "seconds",
        "params",
        title=f"search on validation {r['search']['metric']} (best: trial {r['search']['best_trial']})",
    )
    for t in r["search"]["trials"]:
        trials.add_row(
            str(t["number"]),
            _fmt(t["score"]),
            str(t["best_iteration"]),
            f"{t['seconds']:.1f}",
            str(t["params"]),
        )
    console.print(trials)
    data = Table("split", "rows", "time range", "sha256", "path", title="data")
    for split, ref in r["data"].items():
        data.add_row(
            split,
            f"{ref['rows']:,}",
            f"{ref['first_event']} .. {ref['last_event']}",
            ref["sha256"][:16],
            ref["path"],
        )
    console.print(data)
    console.print(
        _metrics_table("metrics (model vs naive baseline)", {k: v for k, v in r["metrics"].items()})
    )
    console.print(r["baseline"]["description"] + ". " + r["baseline"]["gain"])
    if r["partitions"]:
        parts = Table(
            "partition",
            "train rows",
            "val rows",
            "own",
            "parent",
            "serves",
            "why",
            title="partitions",
        )
        for d in r["partitions"]:
            parts.add_row(
                d["partition"],
                str(d["train_rows"]),
                str(d["validation_rows"]),
                _fmt(d.get("own")),
                _fmt(d.get("parent")),
                "own model" if d["kept"] else "parent",
                d["reason"],
            )
        console.print(parts)
        per = Table(
            "partition",
            "served by",
            "test model",
            "test baseline",
            title="test metrics per partition",
        )
        metric = "rmse" if r["task"] == "regression" else "auc"
        for value, entry in r["metrics"]["test"].get("partitions", {}).items():
            per.add_row(
                value,
                entry["served_by"],
                _fmt(entry["model"].get(metric)),
                _fmt(entry["baseline"].get(metric)),
            )
        console.print(per)
    feats = Table(
        "feature",
        "view",
        "importance",
        "kind",
        "mean / top",
        "p50",
        "nulls",
        title="features (training distribution)",
    )
    for f in r["features"]:
        d = r["distributions"][f["name"]]
        center = (
            _fmt(d.get("mean")) if d.get("kind") == "numeric" else next(iter(d.get("top", {})), "")
        )
        feats.add_row(
            f["name"],
            f["view"],
            _fmt(r["importance"].get(f["name"])),
            d.get("kind", ""),
            center,
            _fmt(d.get("quantiles", {}).get("p50")),
            str(d["nulls"]),
        )
    console.print(feats)
    for feature, curve in r["partial_dependence"].items():
        console.print(
            f"partial dependence of {feature}: {curve['grid'][0]:.1f}..{curve['grid'][-1]:.1f} -> "
            f"{min(curve['average_prediction']):.2f}..{max(curve['average_prediction']):.2f}"
        )
    if r.get("threshold") is not None:
        console.print(f"decision threshold: {r['threshold']:.4f}")
    moves = registry.alias_history(settings, version.name)
    if moves:
        history = Table(
            "alias", "version", "previous", "by", "at", title=f"alias history of {version.name}"
        )
        for m in moves:
            history.add_row(m["alias"], m["version"], m["previous"] or "", m["by"], m["at"][:19])
        console.print(history)
    console.print(f"report: {version.report}")


def comparison_tables(comparison: dict[str, Any]) -> list[Table]:
    metrics = Table("test metric", comparison["a"], comparison["b"], title="metrics")
    for name, a, b in comparison["metrics"]:
        metrics.add_row(name, _fmt(a), _fmt(b))
    importance = Table("feature", comparison["a"], comparison["b"], title="importance")
    for name, a, b in comparison["importance"]:
        importance.add_row(name, _fmt(a), _fmt(b))
    return [metrics, importance]


def version_summary(console: Console, version: Any) -> None:
    r = version.record
    console.print(f"registered [bold]{version.tag}[/]: {r['baseline']['gain']}")
    console.print(f"record: maquette models show {version.tag}    report: {version.report}")


def monitor_summary(console: Console, run: Any) -> None:
    """What a monitoring pass found: per model accuracy, drift and skew; freshness; alerts."""
    console.print(
        f"monitoring as of {run.as_of:%Y-%m-%d %H:%M} UTC; {run.drained:,} predictions drained"
    )
    for name, reason in run.skipped.items():
        console.print(f"[yellow]{name}: skipped, {reason}[/]")
    for name, found in run.models.items():
        series = next(iter(found.metrics.values()))
        overall = series[series["partition"] == "all"]
        metric = "rmse" if "rmse" in overall else "auc"
        table = Table(
            "window",
            "version",
            "predictions",
            "labelled",
            metric.upper(),
            "missing features",
            title=f"{name}: {found.predictions:,} predictions, {found.labelled:,} labelled",
        )
        for row in overall.tail(10).to_dict("records"):
            table.add_row(
                _ts(row["window_start"]),
                str(row["version"]),
                f"{row['predictions']:,}",
                f"{row['labelled']:,}",
                _fmt(row.get(metric)),
                f"{row['missing_feature_rate']:.1%}",
            )
        console.print(table)
        for report in found.reports:
            drifted = ", ".join(report.drifted_features[:6]) or "none"
            console.print(
                f"  drift {report.window_start[:10]} ({report.version}): "
                f"{report.drift_share:.0%} of features drifted ({drifted})"
            )
        for skew in found.skew:
            worst = sorted(skew.mismatch_rate.items(), key=lambda kv: -kv[1])[:3]
            console.print(
                f"  skew {skew.version} on {skew.rows:,} sampled predictions: worst "
                + ", ".join(f"{f} {r:.1%}" for f, r in worst)
            )
    stale = [f.view for f in run.freshness if f.stale]
    console.print(f"feature views stale in the online store: {', '.join(stale) or 'none'}")
    for alert in run.new_alerts:
        console.print(f"[bold red]ALERT[/] {alert.message}")
    if run.webhook_error:
        console.print(f"[yellow]{run.webhook_error}[/]")
    for name, outcome in run.retrained.items():
        console.print(f"{name}: {outcome}")
    console.print(f"reports: {run.index}")
    console.print(f"Evidently UI: evidently ui --workspace {run.workspace}")


def _traffic_summary(console: Console, report: DemoReport) -> None:
    import numpy as np

    t = report.traffic
    assert t is not None
    ms = np.array(t.request_ms) if t.request_ms else np.array([float("nan")])
    console.print(
        f"replayed {t.start:%Y-%m-%d %H:%M} to {t.end:%Y-%m-%d %H:%M} UTC: {t.flights:,} flights "
        f"({t.skipped:,} without entity keys skipped), {t.events:,} departure events through the "
        f"stream, {t.requests:,} HTTP requests to the service, {t.failures} failed; "
        f"{report.drained:,} logged predictions drained"
    )
    console.print(
        f"serving latency seen by the client per request (~{t.rows_per_request:.0f}"
        f" rows): p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, "
        f"p99 {np.percentile(ms, 99):.1f} ms; materialize along the clock {t.materialize_s:.1f} s, "
        f"waiting for the stream processor {t.stream_wait_s:.1f} s"
    )
    for error in t.errors:
        console.print(f"[red]request failed[/] {error}")


def _december_summary(console: Console, run: Any) -> None:
    """Live accuracy per day, drift, skew and alerts from the demo's monitoring pass."""
    daily = {}
    for name, found in run.models.items():
        series = found.metrics.get("daily")
        if series is None:
            continue
        overall = series[series["partition"] == "all"]
        metric = "rmse" if "rmse" in overall else "auc"
        daily[name] = (metric, {r["window_start"]: r for r in overall.to_dict("records")})
    days = sorted({d for _, rows in daily.values() for d in rows})
    table = Table(
        "day",
        *[f"{n} {m.upper()}" for n, (m, _) in daily.items()],
        "predictions",
        "labelled",
        title="live accuracy per day (labels joined as flights landed)",
    )
    for day in days:
        cells: list[str] = []
        first: dict[str, Any] = {}
        for metric, rows in daily.values():
            row = rows.get(day)
            first = first or row or {}
            cells.append(_fmt(row.get(metric)) if row else "-")
        table.add_row(
            _ts(day)[:10],
            *cells,
            f"{first.get('predictions', 0):,}",
            f"{first.get('labelled', 0):,}",
        )
    console.print(table)
    for name, found in run.models.items():
        for report in found.reports:
            drifted = ", ".join(report.drifted_features[:8]) or "none"
            console.print(
                f"drift {name}:{report.version} week of {report.window_start[:10]}: "
                f"{report.drift_share:.0%} of features ({drifted})"
            )
        for skew in found.skew:
            console.print(
                f"skew {name}:{skew.version}: worst feature mismatch {skew.worst:.2%} "
                f"on {skew.rows:,} sampled predictions"
            )
    console.print(f"alerts raised: {len(run.new_alerts)}")
    for alert in run.new_alerts[:10]:
        console.print(f"  [bold red]ALERT[/] {alert.message}")
    if len(run.new_alerts) > 10:
        console.print(f"  ... and {len(run.new_alerts) - 10} more in the monitoring index")


def _where_to_look(console: Console, report: DemoReport) -> None:
    table = Table("what", "where", title="where to look")
    for status in report.platform:
        url = status.url or ""
        if status.name == "service" and url:
            url += "  (Swagger UI at /)"
        if status.name == "prefect" and url:
            url += "  (Prefect UI)"
        table.add_row(f"{status.name} ({status.state})", url)
    if report.models:
        table.add_row("model report", str(report.models[0].report))
    if report.monitoring:
        table.add_row("monitoring reports", str(report.monitoring.index))
        table.add_row("Evidently UI", f"evidently ui --workspace {report.monitoring.workspace}")
    console.print(table)
    console.print("the platform keeps running: maquette status | maquette down")
