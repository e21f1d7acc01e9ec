"""Late-arriving labels and their join with logged predictions.

Labels come from the model's declared label source (for the demo: each flight's actual delay,
known once it landed) or from a Parquet/CSV file keyed by `prediction_id` or by the entity keys
and the request time. `join_labels` produces the scored-predictions table: every logged
prediction (shadows excluded) with its label when known, the delay between prediction and
label, and the version and partition that answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from maquette import datasets, predictions
from maquette.config import LabelSpec, Settings
from maquette.errors import ConfigError, DataNotLoaded, InvalidEntityFrame

LABEL = "label"


@dataclass
class IngestResult:
    rows: int
    path: Path
    unknown_ids: int = 0


def labels_path(settings: Settings, name: str) -> Path:
    return settings.offline_store / "labels" / f"{name}.parquet"


def scored_path(settings: Settings, name: str) -> Path:
    return settings.offline_store / "scored" / f"{name}.parquet"


def _spec(settings: Settings, name: str) -> LabelSpec:
    spec = settings.model_spec(name)
    if spec.labels is None:
        raise ConfigError(
            f"model {name!r} declares no label source.",
            f"Add models.{name}.labels (join_keys, time_column) to maquette.yaml.",
        )
    return spec.labels


def _con(settings: Settings | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if settings is not None:
        # Bounded memory for large logs: DuckDB spills to disk instead of growing.
        spill = settings.state_dir / "duckdb_tmp"
        spill.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET memory_limit = '{settings.monitoring.join_memory_limit}'")
        con.execute(f"SET temp_directory = '{spill}'")
        con.execute("SET preserve_insertion_order = false")
    return con


def ingest_labels(settings: Settings, name: str, file: Path | None = None) -> IngestResult:
    """Store the labels of model `name`: from `file` if given, else from its declared source."""
    spec, labels = settings.model_spec(name), _spec(settings, name)
    con = _con()
    target = labels_path(settings, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if file is not None:
        if not file.is_file():
            raise InvalidEntityFrame(
                f"label file {file} does not exist.", "Pass a Parquet or CSV file."
            )
        reader = "read_csv_auto" if file.suffix.lower() == ".csv" else "read_parquet"
        table = con.sql(f"SELECT * FROM {reader}('{file}')").to_arrow_table()
        needed = (
            {"prediction_id", LABEL}
            if "prediction_id" in table.column_names
            else {*labels.join_keys, labels.time_column, LABEL}
        )
        if missing := sorted(needed - set(table.column_names)):
            raise InvalidEntityFrame(
                f"label file {file.name} lacks column(s) {missing}.",
                "Key labels by prediction_id, or by the entity keys and the request time; "
                f"the value goes in a column named {LABEL!r}.",
            )
        unknown = _unknown_ids(settings, name, table)
        pq.write_table(table, target)
        return IngestResult(table.num_rows, target, unknown)
    source = datasets.require_loaded(
        settings, labels.source or spec.entity_source or settings.dataset.entity_source
    )
    keys = ", ".join(f'"{k}"' for k in labels.join_keys)
    known = f', "{labels.available_at}" AS label_available_at' if labels.available_at else ""
    table = con.sql(
        f'SELECT {keys}, "{labels.time_column}", ({spec.label})::DOUBLE AS {LABEL}{known} '
        f"FROM read_parquet('{source}') WHERE ({spec.label}) IS NOT NULL"
    ).to_arrow_table()
    pq.write_table(table, target)
    return IngestResult(table.num_rows, target)


def _unknown_ids(settings: Settings, name: str, table: pa.Table) -> int:
    if "prediction_id" not in table.column_names:
        return 0
    logged = set(predictions.read_predictions(settings, name)["prediction_id"].to_pylist())
    return sum(1 for pid in table["prediction_id"].to_pylist() if pid not in logged)


def join_labels(
    settings: Settings,
    name: str,
    as_of: datetime | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Every logged prediction of `name` with its label when known; written to the offline store.

    With `as_of`, a label counts only if it was available by then (replays and backtests).
    One DuckDB statement from the Parquet log to the scored Parquet file: a million logged
    predictions never pass through Python; `columns` reads back only those.
    """
    labels = _spec(settings, name)
    logged = predictions.logged_sql(settings, name)
    if not labels_path(settings, name).is_file():
        raise DataNotLoaded(
            f"no labels ingested for {name!r}.", f"Run `maquette labels ingest {name}`."
        )
    con = _con(settings)
    source = f"read_parquet('{labels_path(settings, name)}')"
    present = [r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()]
    if "prediction_id" in present:
        label_keys = ["prediction_id"]
        on = "l.prediction_id = p.prediction_id"
    else:
        label_keys = [*labels.join_keys, labels.time_column]
        keys = [f"json_extract_string(p.entity, '$.{k}') = l.\"{k}\"" for k in labels.join_keys]
        column = labels.time_column
        when = f"CAST(json_extract_string(p.request, '$.{column}') AS TIMESTAMPTZ) = l.\"{column}\""
        on = " AND ".join([*keys, when])
    known = "l.label_available_at" if "label_available_at" in present else "NULL::TIMESTAMPTZ"
    if as_of is not None and "label_available_at" in present:
        on += f" AND l.label_available_at <= '{as_of.isoformat()}'::TIMESTAMPTZ"
    # One label per key (the first seen), so the left join keeps one row per prediction.
    distinct = ", ".join(f'"{k}"' for k in label_keys)
    target = scored_path(settings, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.parquet")
    con.execute(f"""
        COPY (
            WITH p AS ({logged}),
                 l AS (SELECT DISTINCT ON ({distinct}) * FROM {source})
            SELECT p.prediction_id, p.request_time, p.logged_at, p.model, p.version,
                   p.partition, p.prediction, p.decision, p.entity, p.request, p.features,
                   p.missing, p.stale, l.{LABEL}::DOUBLE AS label,
                   {known} AS label_available_at,
                   date_diff('second', p.request_time, {known}) AS label_delay_s
            FROM p LEFT JOIN l ON {on}
            WHERE NOT p.shadow
        ) TO '{partial}' (FORMAT parquet)""")
    partial.replace(target)  # readers never see a half-written table
    return pq.read_table(target, columns=columns)
