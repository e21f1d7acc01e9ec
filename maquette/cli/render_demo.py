"""The demo's closing summary: what each stage did, live traffic, a month of monitoring."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from maquette.cli.render import (
    fmt,
    heading,
    incidents_table,
    materialize_table,
    online_features_table,
    tables_table,
    ts,
)
from maquette.cli.render_models import headline_metrics

if TYPE_CHECKING:
    from maquette.monitoring.monitor import MonitorRun
    from maquette.platform.demo import DemoReport


def demo_summary(console: Console, report: DemoReport) -> None:
    heading(console, "Maquette demo: summary")
    console.print(tables_table(report.tables))
    console.print(f"registered with Feast: {', '.join(report.registered)}")
    if report.materialized:
        console.print(materialize_table(report.materialized))
    console.print(
        f"training frame: {report.training_rows:,} rows x {len(report.training_columns)} "
        f"columns ({report.label_rows:,} with a label)"
    )
    if report.online_sample:
        # The entity's keys: its text fields (ids, codes), not its measurements.
        entity = {k: v for k, v in report.online_entity.items() if isinstance(v, str)}
        console.print(f"online features for {entity} as of its event time:")
        console.print(online_features_table(report.online_sample))
    if report.models:
        console.print(_models_table(report))
        console.print(f"details: maquette models show {report.models[0].name}@production")
    if report.traffic:
        _traffic_summary(console, report)
    if report.monitoring:
        _monitoring_summary(console, report.monitoring)
    timing = Table("stage", "seconds", title="stage times")
    for stage, seconds in report.stage_seconds.items():
        timing.add_row(stage, f"{seconds:.2f}")
    timing.add_row("[bold]total[/]", f"{sum(report.stage_seconds.values()):.2f}")
    console.print(timing)
    _where_to_look(console, report)


def _models_table(report: DemoReport) -> Table:
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
        kept = ", ".join(d.partition for d in r.partitions if d.kept) or "-"
        models.add_row(version.tag, headline_metrics(r), r.baseline.gain, kept, str(version.report))
    return models


def _traffic_summary(console: Console, report: DemoReport) -> None:
    # Lazy, as the imports above: numpy and the demo module (Feast) cost start-up time.
    import numpy as np

    from maquette.platform.traffic import STREAM_WAIT_S

    t = report.traffic
    assert t is not None
    ms = np.array(t.request_ms) if t.request_ms else np.array([float("nan")])
    console.print(
        f"replayed {t.start:%Y-%m-%d %H:%M} to {t.end:%Y-%m-%d %H:%M} UTC: "
        f"{t.entity_rows:,} entity rows ({t.skipped:,} without entity keys skipped), "
        f"{t.events:,} events through the "
        f"stream, {t.requests:,} HTTP requests to the service, {t.failures} failed; "
        f"{report.logged:,} predictions logged and drained to Parquet "
        f"({report.drained:,} by the final drain, the rest by the scheduled one)"
    )
    if t.stream_behind:
        console.print(
            f"[bold red]WARNING[/] the stream processor had not applied the events within "
            f"{STREAM_WAIT_S:.0f} s at {t.stream_behind:,} of the replay's slots: predictions "
            "there used streaming features behind the replay's clock (see the stream log)"
        )
    console.print(
        f"serving latency seen by the client per request (~{t.rows_per_request:.0f}"
        f" rows): p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, "
        f"p99 {np.percentile(ms, 99):.1f} ms; materialize along the clock {t.materialize_s:.1f} s, "
        f"waiting for the stream processor {t.stream_wait_s:.1f} s"
    )
    for error in t.errors:
        console.print(f"[red]request failed[/] {error}")
    if report.schedules_held and report.schedules_resumed_at:
        console.print(
            f"schedules held paused from before the deployments started until the replay "
            f"ended: {', '.join(report.schedules_held)}; resumed at "
            f"{report.schedules_resumed_at.isoformat()}"
        )


def _daily_table(run: MonitorRun) -> Table:
    """Live accuracy per day, one metric column per model."""
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
        title="live accuracy per day (labels joined as they arrived)",
    )
    for day in days:
        cells: list[str] = []
        first: dict[str, Any] = {}
        for metric, rows in daily.values():
            row = rows.get(day)
            first = first or row or {}
            cells.append(fmt(row.get(metric)) if row else "-")
        table.add_row(
            ts(day)[:10],
            *cells,
            f"{first.get('predictions', 0):,}",
            f"{first.get('labelled', 0):,}",
        )
    return table


def _monitoring_summary(console: Console, run: MonitorRun) -> None:
    """Live accuracy per day, then the incidents of the demo's monitoring pass (open first)."""
    console.print(_daily_table(run))
    for name, found in run.models.items():
        judged = [r for r in found.reports if r.complete]
        versions = ",".join(sorted({r.version for r in found.reports})) or "-"
        window = judged[0].window if judged else "drift"
        references = ", ".join(sorted({r.reference for r in judged})) or "no"
        drifted = sum(1 for r in judged if r.drifted_features)
        console.print(
            f"drift {name}:{versions}: {len(judged)} complete {window} windows against the "
            f"{references} reference, {drifted} with drifted features"
        )
        rates = [r for w in found.skew for r in w.mismatch_rate.values()]
        skew_versions = ",".join(sorted({w.version for w in found.skew})) or "-"
        console.print(
            f"skew {name}:{skew_versions}: worst feature mismatch {max(rates, default=0.0):.2%} "
            f"on {sum(w.rows for w in found.skew):,} sampled predictions "
            f"({len(found.skew)} {found.alert_window} windows)"
        )
    current = [i for i in reversed(run.incidents) if i.status == "open"]
    done = [i for i in reversed(run.incidents) if i.status == "resolved"]
    console.print(f"incidents: {len(current)} open, {len(done)} resolved")
    if current:
        console.print(incidents_table(current, "open incidents"))
    if done:
        console.print(incidents_table(done[:10], "resolved incidents (newest)"))
        if len(done) > 10:
            console.print(f"  ... and {len(done) - 10} more: maquette monitor alerts --all")


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
