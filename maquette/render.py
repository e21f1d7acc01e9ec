"""Rich tables and summaries for the CLI (presentation only, no work)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from maquette.datasets import TableSummary
from maquette.features import FeatureLayer, MaterializeResult
from maquette.lifecycle import DemoReport


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
    timing = Table("stage", "seconds", title="stage times")
    for stage, seconds in report.stage_seconds.items():
        timing.add_row(stage, f"{seconds:.2f}")
    timing.add_row("[bold]total[/]", f"{sum(report.stage_seconds.values()):.2f}")
    console.print(timing)
    console.print(f"Redis: {report.redis_url}  (maquette redis status | stop)")
