"""The alert benchmark's results for people (rich tables, Markdown for BENCHMARKS.md) and for
programs (a JSON document).

How to read them:
- Faults: `detected by` is the incident (kind, model, subject, columns) that named what the
  faults file expects; `hours` runs from the onset to the monitoring pass that named it,
  `windows` counts judged windows from the onset to the end of the window that breached
  (monitoring passes for freshness); `resolved` is hours after the repair (the incident of
  that key open at the repair), `open` if it never resolved before the replay ended.
- Clean replay: incidents per model and month (`-`: feature views, freshness), split into
  those a data fact explains (listed below the table with the fact) and unexplained ones.
- Drift references: complete drift windows with enough rows judged against each reference
  kind, breaching ones, incidents derived with the monitoring's own rules, and windows whose
  reference fell back to training (too few rows in the trailing or season period).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from maquette.bench.alerts import AlertBenchResult, FaultResult, alert_benchmark
from maquette.bench.alerts_faults import default_faults_path, load_faults
from maquette.bench.alerts_project import DEFAULT_DB, alerts_dir
from maquette.bench.harness import results_table
from maquette.config import Settings


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} h"


def _detected_by(fault: FaultResult) -> str:
    if not fault.detected or fault.incident is None:
        return "not detected"
    found = fault.incident
    # Parentheses, not brackets: rich would read [a, b] as markup and drop it.
    columns = f" ({', '.join(found['columns'])})" if found["columns"] else ""
    return f"{found['kind']} {found['model'] or '-'} {found['subject']}{columns}"


def _resolved(fault: FaultResult) -> str:
    if not fault.detected:
        return "-"
    if not fault.resolved:
        return "open"
    return _hours(fault.hours_to_resolve) + " after repair"


def fault_rows(result: AlertBenchResult) -> list[list[str]]:
    return [
        [
            f.name,
            f.kind,
            f"{f.onset:%b %d %H:%M}",
            _detected_by(f),
            _hours(f.hours_to_detect),
            "-" if f.windows_to_detect is None else str(f.windows_to_detect),
            _resolved(f),
        ]
        for f in result.faults
    ]


def clean_rows(result: AlertBenchResult) -> list[list[str]]:
    return [
        [r["model"], r["month"], str(r["incidents"]), str(r["explained"]), str(r["unexplained"])]
        for r in result.per_model_month("clean")
    ]


def reference_rows(result: AlertBenchResult) -> list[list[str]]:
    return [
        [
            r.reference,
            r.run,
            r.model,
            str(r.windows),
            str(r.breached),
            str(r.incidents),
            str(r.fallbacks),
            ", ".join(r.faults) or "-",
        ]
        for r in result.references
    ]


def timing_rows(result: AlertBenchResult) -> list[list[str]]:
    rows = []
    for run in result.runs.values():
        s = run.seconds
        replayed = s.get("total", 0.0) - s.get("monitor", 0.0)
        rows.append(
            [
                run.run,
                f"{run.slots:,}",
                f"{run.rows:,}",
                f"{run.events:,}",
                str(len(run.passes)),
                f"{replayed:.0f} s",
                f"{s.get('materialize', 0.0):.0f} s",
                f"{s.get('stream', 0.0):.0f} s",
                f"{s.get('predict', 0.0):.0f} s",
                f"{s.get('monitor', 0.0):.0f} s",
                f"{s.get('total', 0.0):.0f} s",
            ]
        )
    return rows


def explained_lines(result: AlertBenchResult, run: str = "clean") -> list[str]:
    """One line per incident of a replay: what, when, explained by which fact (or not)."""
    lines = []
    for r in result.incidents:
        if r.run != run:
            continue
        why = r.fact if r.explained else "unexplained"
        if r.fault:
            why = f"fault: {r.fault}" + (f"; {r.fact}" if r.explained else "")
        columns = f" ({', '.join(r.columns[:4])}{', ...' if len(r.columns) > 4 else ''})"
        lines.append(
            f"- {r.opened_at[:16]} {r.kind} {r.model or '-'} {r.subject}"
            f"{columns if r.columns else ''}: {why}"
        )
    return lines


def render(result: AlertBenchResult, console: Console) -> str:
    """Print the tables; return them as Markdown (for BENCHMARKS.md)."""
    replay = result.replay
    title = (
        f"Alert benchmark: {replay['start'][:10]} to {replay['end'][:10]}, a pass every "
        f"{replay['pass_every']}"
    )
    parts = [f"### {title}"]
    parts.append(
        results_table(
            console,
            "Injected faults (faulty replay)",
            ["fault", "kind", "onset", "detected by", "hours", "windows", "resolved"],
            fault_rows(result),
        )
    )
    parts.append(
        results_table(
            console,
            "Clean replay: incidents per model and month",
            ["model", "month", "incidents", "explained", "unexplained"],
            clean_rows(result),
        )
    )
    lines = explained_lines(result)
    console.print("\n".join(lines) or "(the clean replay raised no incident)")
    parts.append("\n".join(lines) or "(the clean replay raised no incident)")
    if result.references:
        parts.append(
            results_table(
                console,
                "Drift references",
                [
                    "reference",
                    "replay",
                    "model",
                    "windows",
                    "breached",
                    "incidents",
                    "fallback",
                    "faults overlapped",
                ],
                reference_rows(result),
            )
        )
    parts.append(
        results_table(
            console,
            "Replay cost",
            [  # seconds: replay is everything but monitoring
                "replay",
                "slots",
                "predictions",
                "events",
                "passes",
                "replay",
                "materialize",
                "stream",
                "predict",
                "monitoring",
                "total",
            ],
            timing_rows(result),
        )
    )
    return "\n\n".join(parts) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def result_document(result: AlertBenchResult) -> dict[str, Any]:
    """The results as plain data (the JSON file's content)."""
    runs = {}
    for name, run in result.runs.items():
        data = asdict(run)
        data["passes_run"] = len(run.passes)
        runs[name] = data
    return {
        "faults_file": result.faults_file,
        "replay": result.replay,
        "faults": [asdict(f) for f in result.faults],
        "clean_per_model_month": result.per_model_month("clean"),
        "faulty_per_model_month": result.per_model_month("faulty"),
        "incidents": [asdict(r) for r in result.incidents],
        "references": [asdict(r) for r in result.references],
        "runs": runs,
        "seconds": result.seconds,
    }


def result_json(result: AlertBenchResult) -> str:
    return json.dumps(result_document(result), indent=2, default=_plain)


def run_alert_bench(
    settings: Settings,
    faults: Path | None,
    out: Path | None,
    console: Console,
    redis_db: int = DEFAULT_DB,
    references: bool = True,
) -> AlertBenchResult:
    """`maquette bench alerts`: load the faults file, replay clean and faulty with progress
    bars, print the tables, write the JSON (`out`, default `<state>/bench/alerts/results.json`)
    and the Markdown beside it (`.md`)."""
    path = faults or default_faults_path(settings)
    plan = load_faults(path)
    bar = Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slots"),
        TimeElapsedColumn(),
        console=console,
    )
    tasks: dict[str, TaskID] = {}

    def progress(run: str, done: int, total: int) -> None:
        if run not in tasks:
            tasks[run] = bar.add_task(run, total=total)
        bar.update(tasks[run], completed=done)

    with bar:
        result = alert_benchmark(
            settings,
            plan,
            str(path),
            (redis_db, redis_db),
            progress=progress,
            announce=lambda text: bar.console.print(f"[dim]{text}[/dim]"),
            references=references,
        )
    markdown = render(result, console)
    target = out or alerts_dir(settings) / "results.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(result_json(result))
    target.with_suffix(".md").write_text(markdown)
    console.print(f"Results: {target} and {target.with_suffix('.md')}")
    return result
