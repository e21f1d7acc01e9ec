"""The CLI's views: rich tables for people and `--json` documents for programs, of data,
features, platform, stream and monitoring (presentation only).

A `*_document` function returns plain data (dicts, lists, numbers, strings, datetimes) built
from the library's objects; `options.print_json` writes it. The library's result types are
imported for type checking only: Feast and friends take seconds to import, and
`maquette --help` must not wait for them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

    from maquette.data.sources import TableSummary
    from maquette.features.layer import FeatureLayer
    from maquette.features.materialize import MaterializeResult
    from maquette.features.online import OnlineFeatures
    from maquette.monitoring.incidents import Incident
    from maquette.monitoring.monitor import MonitorRun
    from maquette.platform.components import ComponentStatus
    from maquette.stream.operations import StreamStatus


def ts(value: object) -> str:
    """A timestamp to the minute ("" for None)."""
    return "" if value is None else str(value)[:16]


def fmt(value: object) -> str:
    """A metric: floats to 4 decimals, None as ""."""
    if isinstance(value, float):
        return f"{value:,.4f}"
    return "" if value is None else str(value)


def heading(console: Console, title: str) -> None:
    """A rule with a title, across the terminal (80 columns when piped: the console is wide)."""
    console.print(Rule(title), width=console.width if console.is_terminal else 80)


def tables_table(tables: list[TableSummary]) -> Table:
    table = Table(
        "table", "kind", "rows", "first event", "last event", "path", title="offline store"
    )
    for t in tables:
        table.add_row(
            t.name, t.kind, f"{t.rows:,}", ts(t.first_event), ts(t.last_event), str(t.path)
        )
    return table


def materialize_table(result: MaterializeResult) -> Table:
    table = Table(
        "feature view",
        "rows read",
        "rows written",
        title=f"materialized {ts(result.start)} .. {ts(result.end)} in {result.seconds:.2f}s",
    )
    for name, read in result.rows_read.items():
        table.add_row(name, f"{read:,}", f"{result.rows_written.get(name, 0):,}")
    return table


def feature_views_table(layer: FeatureLayer) -> Table:
    table = Table("feature view", "entities", "ttl", "features", title="feature views")
    for view in sorted(layer.feature_views(), key=lambda v: v.name):
        table.add_row(
            view.name,
            ", ".join(_entities(view)) or "(none)",
            str(view.ttl or "none"),
            ", ".join(f.name for f in view.features),
        )
    for odfv in layer.store.list_on_demand_feature_views():
        table.add_row(odfv.name, "(request data)", "-", ", ".join(f.name for f in odfv.features))
    for service in layer.store.list_feature_services():
        views = ", ".join(p.name for p in service.feature_view_projections)
        table.add_row(f"[bold]service {service.name}[/]", "", "", views)
    return table


def _entities(view: Any) -> list[str]:
    """A view's entity names; none for an entity-less view (Feast gives it a placeholder)."""
    from feast.feature_view import DUMMY_ENTITY_NAME

    return [e for e in view.entities if e != DUMMY_ENTITY_NAME]


def feature_views_document(layer: FeatureLayer) -> dict[str, Any]:
    """`features list --json`: feature views, on-demand views and feature services."""
    views = [
        {
            "name": view.name,
            "entities": _entities(view),
            # Feast's TTL 0 means "never expires": 0, not null (no TTL declared).
            "ttl_s": view.ttl.total_seconds() if view.ttl is not None else None,
            "online": view.online,
            "features": [{"name": f.name, "dtype": str(f.dtype)} for f in view.features],
        }
        for view in sorted(layer.feature_views(), key=lambda v: v.name)
    ]
    on_demand = [
        {
            "name": odfv.name,
            "features": [{"name": f.name, "dtype": str(f.dtype)} for f in odfv.features],
        }
        for odfv in layer.store.list_on_demand_feature_views()
    ]
    services = [
        {"name": s.name, "feature_views": [p.name for p in s.feature_view_projections]}
        for s in layer.store.list_feature_services()
    ]
    return {
        "feature_views": views,
        "on_demand_feature_views": on_demand,
        "feature_services": services,
    }


def online_features_table(result: OnlineFeatures, row: int = 0) -> Table:
    """One entity row's features: value and status (PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE)."""
    table = Table("feature", "value", "status")
    for name in result.names:
        table.add_row(name, repr(result.values[row][name]), result.statuses[row][name])
    return table


def platform_table(statuses: list[ComponentStatus]) -> Table:
    colours = {
        "running": "green",
        "unready": "yellow",
        "starting": "yellow",
        "restarting": "yellow",
    }
    logs = sorted({str(s.log.parent) for s in statuses if s.log})
    table = Table(
        "component",
        "state",
        "url",
        "pid",
        "restarts",
        "last exit",
        "detail",
        caption=f"logs: {', '.join(logs)}",
    )
    for s in statuses:
        state = f"[{colours.get(s.state, 'red')}]{s.state}[/]"
        restarts = f"[yellow]{s.restarts}[/]" if s.restarts else "0"
        table.add_row(
            s.name, state, s.url or "", str(s.pid or ""), restarts, s.last_exit or "", s.detail
        )
    return table


def fields_table(record: object) -> Table:
    """A dataclass as a two-column table (field, value)."""
    table = Table("field", "value", show_header=False)
    for name, value in vars(record).items():
        table.add_row(name, str(value))
    return table


def stream_status_tables(state: StreamStatus, letters: list[dict[str, str]]) -> list[Table]:
    """The stream's counters, then its newest dead letters (when there are any)."""
    table = Table("field", "value", show_header=False)
    for name, value in vars(state).items():
        table.add_row(
            name, "-" if value is None else f"{value:,}" if isinstance(value, int) else value
        )
    if not letters:
        return [table]
    dead_table = Table("source id", "reason", title="newest dead letters")
    for letter in letters:
        dead_table.add_row(letter.get("source_id", ""), letter.get("reason", ""))
    return [table, dead_table]


def stream_status_document(state: StreamStatus, letters: list[dict[str, str]]) -> dict[str, Any]:
    """`stream status --json`: the stream's counters and its newest dead letters."""
    return {**asdict(state), "newest_dead_letters": letters}


def metrics_document(name: str, window: str, since: object, series: pd.DataFrame) -> dict[str, Any]:
    """`monitor metrics --json`: one row per version, partition and window, as stored."""
    return {
        "model": name,
        "window": window,
        "since": since,
        "series": series.to_dict("records"),
    }


def metrics_series_table(name: str, window: str, series: pd.DataFrame) -> Table:
    """Live metrics per version, partition and window, as `monitor metrics` prints them."""
    table = Table(
        *[c for c in series.columns if c not in ("model", "window")],
        title=f"{name}: {window} metrics",
    )
    for row in series.drop(columns=["model", "window"]).itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v)[:16] for v in row])
    return table


def monitor_summary(console: Console, run: MonitorRun) -> None:
    """What a monitoring pass found: per model accuracy, drift and skew; freshness; incidents."""
    console.print(
        f"monitoring as of {run.as_of:%Y-%m-%d %H:%M} UTC; {run.drained:,} predictions drained"
    )
    for name, reason in run.skipped.items():
        console.print(f"[yellow]{name}: skipped, {reason}[/]")
    for name, found in run.models.items():
        console.print(_window_table(name, found))
        for report in found.reports[-5:]:
            drifted = ", ".join(report.drifted_features[:6]) or "none"
            open_note = "" if report.complete else ", window still open"
            console.print(
                f"  drift {str(report.window_start)[:10]} ({report.version}, {report.reference} "
                f"reference{open_note}): {report.drift_share:.0%} of features drifted ({drifted})"
            )
        worst = _worst_skew(found.skew)
        if worst is not None:
            console.print(
                f"  skew in {len(found.skew)} {found.alert_window} windows: worst "
                f"{worst[0]} {worst[1]:.1%} of the sampled predictions"
            )
    stale = [f.view for f in run.freshness if f.stale]
    console.print(f"feature views stale in the online store: {', '.join(stale) or 'none'}")
    console.print(
        f"incidents: {len(run.incidents_opened)} opened and {len(run.incidents_resolved)} "
        f"resolved in this pass; {len(run.open_incidents)} open"
    )
    if run.open_incidents:
        console.print(incidents_table(run.open_incidents, "open incidents"))
    for incident in run.incidents_opened:
        console.print(f"[bold red]OPENED[/] {incident.id}: {incident.message}")
    for incident in run.incidents_resolved:
        console.print(f"[green]RESOLVED[/] {incident.id}")
    if run.webhook_error:
        console.print(f"[yellow]{run.webhook_error}[/]")
    for name, outcome in run.retrained.items():
        console.print(f"{name}: {outcome.summary}")
    console.print(f"reports: {run.index}")
    console.print(f"Evidently UI: evidently ui --workspace {run.workspace}")


def _worst_skew(windows: list[Any]) -> tuple[str, float] | None:
    """The feature with the highest mismatch rate over the sampled windows, and that rate."""
    rates = [(f, r) for w in windows for f, r in w.mismatch_rate.items()]
    return max(rates, key=lambda fr: fr[1]) if rates else None


def incidents_table(incidents: list[Incident], title: str) -> Table:
    """One row per incident: kind, model, subject, severity, since, columns, windows."""
    resolved = any(i.status == "resolved" for i in incidents)
    table = Table("id", "kind", "model", "subject", "severity", "since", title=title)
    if resolved:
        table.add_column("resolved")
    table.add_column("columns")
    table.add_column("windows")
    for i in incidents:
        severity = "[bold red]critical[/]" if i.severity == "critical" else "[yellow]warning[/]"
        windows = f"{len(i.windows)}: {ts(i.first_window_start)} .. {ts(i.last_window_end)}"
        cells = [i.id, i.kind, i.model or "-", i.subject, severity, ts(i.opened_at)]
        if resolved:
            cells.append(ts(i.resolved_at))
        table.add_row(*cells, ", ".join(i.columns), windows)
    return table


def alerts_view(console: Console, incidents: list[Incident], everything: bool) -> None:
    """`monitor alerts`: open incidents first (newest first), then resolved ones with --all."""
    current = [i for i in reversed(incidents) if i.status == "open"]
    console.print(incidents_table(current, f"open incidents ({len(current)})"))
    for incident in current:
        console.print(f"[bold]{incident.id}[/] {incident.message}")
    if everything:
        done = [i for i in reversed(incidents) if i.status == "resolved"]
        console.print(incidents_table(done, f"resolved incidents ({len(done)})"))
    elif any(i.status == "resolved" for i in incidents):
        console.print("resolved incidents: `maquette monitor alerts --all`")


def incidents_document(incidents: list[Incident], everything: bool) -> dict[str, Any]:
    """`monitor alerts --json`: {"open": [...], "resolved": [...] (with --all)}, newest first."""
    document: dict[str, Any] = {
        "open": [asdict(i) for i in reversed(incidents) if i.status == "open"]
    }
    if everything:
        document["resolved"] = [asdict(i) for i in reversed(incidents) if i.status == "resolved"]
    return document


def _window_table(name: str, found: Any) -> Table:
    """The last ten windows of a model's overall live accuracy, in its alert window."""
    series = found.metrics[found.alert_window]
    overall = series[series["partition"] == "all"]
    metric = "rmse" if "rmse" in overall else "auc"
    table = Table(
        f"{found.alert_window} window",
        "version",
        "predictions",
        "labelled",
        metric.upper(),
        "missing features",
        title=f"{name}: {found.predictions:,} predictions, {found.labelled:,} labelled",
    )
    for row in overall.tail(10).to_dict("records"):
        table.add_row(
            ts(row["window_start"]),
            str(row["version"]),
            f"{row['predictions']:,}",
            f"{row['labelled']:,}",
            fmt(row.get(metric)),
            f"{row['missing_feature_rate']:.1%}",
        )
    return table
