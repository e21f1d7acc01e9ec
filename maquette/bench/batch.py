"""Batch scoring benchmark (`maquette bench batch`): stock Feast, Maquette and the floor.

Every case scores all rows of a model's entity source (point-in-time features, predictions,
Parquet out) in a fresh interpreter that reports its wall time (after imports, model load
included) and peak RSS:

- stock: Feast's `get_historical_features` for the model's feature service, the model's pandas
  `predict`, pandas `to_parquet`;
- Maquette: `predict_batch`, as `maquette predict-batch` runs it (chunks of
  `serving.batch_chunk_rows`, partition models, version stamps, one Parquet file);
- floor: the least the job takes with the same engines: one DuckDB point-in-time join of the
  whole table (ASOF joins, on-demand features once per distinct input), one LightGBM call of
  the parent model on the whole matrix, one `write_table`; no chunks, no partitions, no stamps.

Maquette also runs on the entity rows twice over, to show its memory does not grow with them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from maquette.bench.harness import (
    bench_dir,
    default_model,
    peak_rss_mb,
    results_table,
    run_child,
    settings_from_ref,
    settings_ref,
)
from maquette.config import Settings

HEADERS = ("case", "rows", "seconds", "rows/s", "peak RSS", "vs floor")


def _child_main(kind: str, settings_json: str, arg: str) -> dict[str, Any]:
    """One case, run by `harness.run_child` in a fresh interpreter. `arg`: selector|entities."""
    from maquette import registry
    from maquette.features.layer import FeatureLayer
    from maquette.serving.batch import predict_batch
    from maquette.training.model_types import TrainedModel

    settings = settings_from_ref(settings_json)
    selector, entities = arg.split("|", 1)
    out = bench_dir(settings) / f"batch-{kind}.parquet"
    began = time.perf_counter()
    if kind == "maquette":
        rows = predict_batch(settings, Path(entities), selector, output=out).rows
    else:
        version = registry.resolve(settings, selector)
        model = TrainedModel.load(version.path, version.record)
        layer = FeatureLayer(settings)
        table = pq.read_table(entities)
        if kind == "stock":
            service = layer.store.get_feature_service(version.record.feature_service)
            frame = layer.store.get_historical_features(
                entity_df=table.to_pandas(), features=service
            ).to_df()
            frame["prediction"], _ = model.predict(frame)
            frame.to_parquet(out)
            rows = len(frame)
        else:
            features = layer.training_frame(table, version.record.feature_service)
            scores = model.learner.predict(model.parent, model.arrow_matrix(features))
            pq.write_table(features.append_column("prediction", pa.array(scores)), out)
            rows = features.num_rows
    seconds = time.perf_counter() - began
    out.unlink(missing_ok=True)
    return {"seconds": seconds, "rows": rows, "rss_mb": peak_rss_mb()}


def _twice_over(settings: Settings, source: Path) -> Path:
    """The entity rows twice, as one Parquet file of the scratch folder."""
    table = pq.read_table(source)
    path = bench_dir(settings) / "batch-entities-x2.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables([table, table]), path, row_group_size=64 * 1024)
    return path


def run_batch_benchmark(settings: Settings, name: str | None, alias: str, console: Console) -> str:
    """Run every case, print the table, return it as Markdown."""
    from maquette.serving.batch import model_entities

    model = name or default_model(settings)
    selector = f"{model}@{alias}"
    source = model_entities(settings, model)
    ref = settings_ref(settings)
    cases = [
        ("stock Feast + pandas predict", "stock", source),
        (
            f"Maquette predict-batch ({settings.serving.batch_chunk_rows:,}-row chunks)",
            "maquette",
            source,
        ),
        ("floor: one DuckDB join + LightGBM", "floor", source),
        ("Maquette predict-batch, the rows twice over", "maquette", _twice_over(settings, source)),
    ]
    results = []
    for label, kind, entities in cases:
        console.print(f"  {label} ...")
        results.append((label, run_child(__name__, kind, ref, f"{selector}|{entities}")))
    floor = results[2][1]
    rows = []
    for label, result in results:
        if "error" in result:
            rows.append((label, "-", f"failed: {result['error'][:60]}", "-", "-", "-"))
            continue
        versus = "-"
        if "error" not in floor and result["rows"]:
            per_row, floor_per_row = (r["seconds"] / r["rows"] for r in (result, floor))
            versus = f"{per_row / floor_per_row:.2f}x"
        rows.append(
            (
                label,
                f"{result['rows']:,}",
                f"{result['seconds']:.2f}",
                f"{result['rows'] / result['seconds']:,.0f}",
                f"{result['rss_mb']:,.0f} MB",
                versus,
            )
        )
    title = f"batch scoring: {model}, every row of its entity source"
    return results_table(console, title, HEADERS, rows)
