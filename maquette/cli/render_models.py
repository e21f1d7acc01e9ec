"""The model repository for people (rich tables) and for programs (`--json` documents):
versions, a version's record, comparisons."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from maquette.cli.render import fmt, heading

if TYPE_CHECKING:
    from maquette.config import Settings
    from maquette.registry import ModelVersion
    from maquette.version_record import Metrics, VersionRecord

# `maquette.registry` is imported inside the functions that need it: it loads BentoML, which
# takes seconds, and `maquette --help` must not wait for it.


def _versus_baseline(record: VersionRecord) -> str:
    test = record.metrics.test
    if record.task == "regression":
        model, base = test.model["rmse"], test.baseline["rmse"]
        return f"rmse {100 * (model - base) / base:+.1f}%"
    return f"auc {test.model['auc'] - test.baseline['auc']:+.3f}"


def headline_metrics(record: VersionRecord) -> str:
    """The headline test metrics of a record, e.g. "rmse 41.210, r2 0.104"."""
    return record.headline()


def _version_fields(settings: Settings, version: ModelVersion) -> dict[str, Any]:
    """What names and locates a version: model, version, tag, created, aliases, paths."""
    from maquette import registry

    return {
        "model": version.name,
        "version": version.version,
        "tag": version.tag,
        "created": version.created,
        "aliases": registry.aliases_of(settings, version),
        "path": version.path,
        "report": version.report,
    }


def versions_document(settings: Settings, name: str | None) -> dict[str, Any]:
    """`models list --json`: every version with its task and test metrics (model, baseline)."""
    from maquette import registry

    versions = []
    for v in registry.list_versions(settings, name):
        test = v.record.metrics.test
        versions.append(
            {
                **_version_fields(settings, v),
                "task": v.record.task,
                "algorithm": v.record.algorithm,
                "test_metrics": {"model": test.model, "baseline": test.baseline},
            }
        )
    return {"versions": versions}


def version_document(settings: Settings, version: ModelVersion) -> dict[str, Any]:
    """`models show --json`: the whole record, with the version's aliases and their history."""
    from maquette import registry

    return {
        **_version_fields(settings, version),
        "alias_history": registry.alias_history(settings, version.name),
        "record": version.record.model_dump(mode="json"),
    }


def versions_table(settings: Settings, name: str | None) -> Table:
    from maquette import registry

    table = Table(title="model versions")
    table.add_column("version", no_wrap=True, min_width=16)
    for header in ("created", "test metrics", "vs baseline", "aliases"):
        table.add_column(header)
    for v in registry.list_versions(settings, name):
        table.add_row(
            v.tag,
            str(v.created)[:16],
            headline_metrics(v.record),
            _versus_baseline(v.record),
            ", ".join(registry.aliases_of(settings, v)),
        )
    return table


def _metrics_table(title: str, metrics: Metrics) -> Table:
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
    for split, entry in (("validation", metrics.validation), ("test", metrics.test)):
        for who, m in (("model", entry.model), ("baseline", entry.baseline)):
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
            table.add_row(split, who, str(m.get("rows")), *(fmt(c) for c in cells))
    return table


def _trials_table(r: VersionRecord) -> Table:
    search = r.search
    trials = Table(
        "trial",
        "score",
        "best iteration",
        "seconds",
        "params",
        title=f"search on validation {search.metric} (best: trial {search.best_trial})",
    )
    for t in search.trials:
        trials.add_row(
            str(t.number), fmt(t.score), str(t.best_iteration), f"{t.seconds:.1f}", str(t.params)
        )
    return trials


def _data_table(r: VersionRecord) -> Table:
    data = Table("split", "rows", "time range", "sha256", "path", title="data")
    for split, ref in r.data.items():
        data.add_row(
            split,
            f"{ref.rows:,}",
            f"{ref.first_event} .. {ref.last_event}",
            ref.sha256[:16],
            ref.path,
        )
    return data


def _partition_tables(r: VersionRecord) -> list[Table]:
    parts = Table(
        "partition", "train rows", "val rows", "own", "parent", "serves", "why", title="partitions"
    )
    for d in r.partitions:
        parts.add_row(
            d.partition,
            str(d.train_rows),
            str(d.validation_rows),
            fmt(d.own),
            fmt(d.parent),
            "own model" if d.kept else "parent",
            d.reason,
        )
    per = Table(
        "partition", "served by", "test model", "test baseline", title="test metrics per partition"
    )
    metric = "rmse" if r.task == "regression" else "auc"
    for value, entry in (r.metrics.test.partitions or {}).items():
        per.add_row(
            value,
            entry.served_by,
            fmt(entry.model.get(metric)),
            fmt(entry.baseline.get(metric)),
        )
    return [parts, per]


def _features_table(r: VersionRecord) -> Table:
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
    for f in r.features:
        d = r.distributions[f.name]
        center = (
            fmt(d.get("mean")) if d.get("kind") == "numeric" else next(iter(d.get("top", {})), "")
        )
        feats.add_row(
            f.name,
            f.view,
            fmt(r.importance.get(f.name)),
            d.get("kind", ""),
            center,
            fmt(d.get("quantiles", {}).get("p50")),
            str(d["nulls"]),
        )
    return feats


def _alias_history_table(name: str, moves: list[dict[str, Any]]) -> Table:
    history = Table("alias", "version", "previous", "by", "at", title=f"alias history of {name}")
    for m in moves:
        history.add_row(m["alias"], m["version"], m["previous"] or "", m["by"], m["at"][:19])
    return history


def record_view(console: Console, settings: Settings, version: Any) -> None:
    """Every section of a version's record, as tables."""
    from maquette import registry

    r = version.record
    heading(console, f"{version.tag}  ({r.task}, {r.algorithm})")
    who = r.trained_by
    console.print(
        f"trained by {who.user}@{who.host} from {r.started_at} to {r.ended_at} "
        f"({r.seconds:.1f}s); code {r.code_version.model_dump(mode='json')}; aliases: "
        f"{', '.join(registry.aliases_of(settings, version)) or 'none'}"
    )
    console.print("libraries: " + ", ".join(f"{k} {v}" for k, v in r.libraries.items()))
    # As stored in record.json (dates as ISO strings), as before the record was typed.
    console.print(f"spec: {r.spec.model_dump(mode='json')}")
    console.print(f"resolved params: {r.params}")
    console.print(_trials_table(r))
    console.print(_data_table(r))
    console.print(_metrics_table("metrics (model vs naive baseline)", r.metrics))
    console.print(r.baseline.description + ". " + r.baseline.gain)
    if r.partitions:
        for table in _partition_tables(r):
            console.print(table)
    console.print(_features_table(r))
    for feature, curve in r.partial_dependence.items():
        console.print(
            f"partial dependence of {feature}: {curve.grid[0]:.1f}..{curve.grid[-1]:.1f} -> "
            f"{min(curve.average_prediction):.2f}..{max(curve.average_prediction):.2f}"
        )
    if r.threshold is not None:
        console.print(f"decision threshold: {r.threshold:.4f}")
    moves = registry.alias_history(settings, version.name)
    if moves:
        console.print(_alias_history_table(version.name, moves))
    console.print(f"report: {version.report}")


def comparison_tables(comparison: dict[str, Any]) -> list[Table]:
    metrics = Table("test metric", comparison["a"], comparison["b"], title="metrics")
    for name, a, b in comparison["metrics"]:
        metrics.add_row(name, fmt(a), fmt(b))
    importance = Table("feature", comparison["a"], comparison["b"], title="importance")
    for name, a, b in comparison["importance"]:
        importance.add_row(name, fmt(a), fmt(b))
    return [metrics, importance]


def comparison_document(comparison: dict[str, Any]) -> dict[str, Any]:
    """`models compare --json`: test metrics and importances of versions a and b, row by row."""
    return {
        "a": comparison["a"],
        "b": comparison["b"],
        "metrics": [{"metric": n, "a": a, "b": b} for n, a, b in comparison["metrics"]],
        "importance": [{"feature": n, "a": a, "b": b} for n, a, b in comparison["importance"]],
    }


def version_summary(console: Console, version: Any) -> None:
    r = version.record
    console.print(f"registered [bold]{version.tag}[/]: {r.baseline.gain}")
    console.print(f"record: maquette models show {version.tag}    report: {version.report}")
