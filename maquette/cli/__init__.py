"""`maquette ...`: each command parses its input, calls one maquette function, renders the result.

This module holds the Typer app, `main` and the one place where a `MaquetteError` becomes its
message, its remedy and an exit code. The commands live in one module per group:

- `options`: what every command shares (consoles, `--project`, ISO dates, progress bars).
- `project`: `init`, `url`.
- `platform`: `demo`, `up`, `status`, `down`, `ui`, `redis start|status|stop`.
- `data`: `data load`, `features apply|materialize|list|get`.
- `models`: `train`, `models list|show|compare|promote|report`, `serve`, `build`,
  `predict-batch`.
- `monitoring`: `predictions drain|count`, `labels ingest`, `monitor metrics|run`.
- `stream`: `stream replay|run|status|backfill|reset`.
- `bench`: `bench features|monitoring|training|serving|stream`.
- `render`, `render_models`, `render_demo`: the view layer, rich tables and summaries only.

May import: every layer of `maquette` (it is the top adapter), never `maquette.examples`.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer.core import TyperGroup

from maquette.cli import bench, data, deploy, models, monitoring, platform, project, stream
from maquette.cli.options import err
from maquette.errors import MaquetteError


class _ReportsErrors(TyperGroup):
    """The root command: a MaquetteError from any command becomes its message, its remedy and
    the error's exit code (`MaquetteError.exit_code`), never a traceback."""

    def invoke(self, ctx: Any) -> Any:  # Typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except MaquetteError as exc:
            err.print(f"[bold red]error:[/] {exc.message}")
            if exc.remedy:
                err.print(f"  [yellow]->[/] {exc.remedy}")
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_ReportsErrors,
    help="Maquette: the Michelangelo ML workflow on Feast, Prefect, BentoML and Evidently.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Top-level commands first, then the groups, in the order `maquette --help` lists them.
app.add_typer(project.commands)
app.add_typer(platform.commands)
app.add_typer(models.commands)
app.add_typer(data.data_app, name="data")
app.add_typer(data.features_app, name="features")
app.add_typer(platform.redis_app, name="redis")
app.add_typer(bench.bench_app, name="bench")
app.add_typer(models.models_app, name="models")
app.add_typer(monitoring.labels_app, name="labels")
app.add_typer(monitoring.monitor_app, name="monitor")
app.add_typer(monitoring.predictions_app, name="predictions")
app.add_typer(stream.stream_app, name="stream")
app.add_typer(deploy.deploy_app, name="deploy")


def main() -> None:
    """The `maquette` console script (and `python -m maquette`)."""
    import warnings

    # Libraries' deprecation notices are for their developers, not for Maquette's users. Feast
    # inserts its own warning filters on import, so drop these at display time instead.
    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, DeprecationWarning | FutureWarning | PendingDeprecationWarning):
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    # Offline, Prefect's server analytics only write errors into its log.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    app(prog_name="maquette")
