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
    """What a monitoring pass found: per model accuracy, drift and skew; freshness; alerts."""
    console.print(
        f"monitoring as of {run.as_of:%Y-%m-%d %H:%M} UTC; {run.drained:,} predictions drained"
    )
    for name, reason in run.skipped.items():
        console.print(f"[yellow]{name}: skipped, {reason}[/]")
    for name, found in run.models.items():
        console.print(_window_table(name, found))
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


def _window_table(name: str, found: Any) -> Table:
    """The last ten windows of a model's overall live accuracy."""
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
            ts(row["window_start"]),
            str(row["version"]),
            f"{row['predictions']:,}",
            f"{row['labelled']:,}",
            fmt(row.get(metric)),
            f"{row['missing_feature_rate']:.1%}",
        )
    return table
