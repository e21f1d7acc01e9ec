"""Late-arriving labels and their join with logged predictions.

Labels come from the model's declared label source (for the demo: each flight's actual delay,
known once it landed) or from a Parquet/CSV file keyed by `prediction_id` or by the entity keys
and the request time. `join_labels` produces the scored-predictions table: every logged
prediction (shadows excluded) with its label when known, the delay between prediction and
label, and the version and partition that answered.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def _con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
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


def join_labels(settings: Settings, name: str) -> pa.Table:
    """Every logged prediction of `name` with its label when known; written to the offline store."""
    labels = _spec(settings, name)
    logged = predictions.read_predictions(settings, name)
    logged = logged.filter(pa.compute.invert(logged["shadow"]))
    if not labels_path(settings, name).is_file():
        raise DataNotLoaded(
            f"no labels ingested for {name!r}.", f"Run `maquette labels ingest {name}`."
        )
    con = _con()
    con.register("logged", logged)
    con.execute(
        f"CREATE VIEW labels AS SELECT * FROM read_parquet('{labels_path(settings, name)}')"
    )
    columns = [r[0] for r in con.sql("DESCRIBE labels").fetchall()]
    if "prediction_id" in columns:
        on = "l.prediction_id = p.prediction_id"
    else:
        keys = [f"json_extract_string(p.entity, '$.{k}') = l.\"{k}\"" for k in labels.join_keys]
        column = labels.time_column
        when = f"CAST(json_extract_string(p.request, '$.{column}') AS TIMESTAMPTZ) = l.\"{column}\""
        on = " AND ".join([*keys, when])
    known = "l.label_available_at" if "label_available_at" in columns else "NULL::TIMESTAMPTZ"
    table = con.sql(f"""
        SELECT p.prediction_id, p.request_time, p.logged_at, p.model, p.version, p.partition,
               p.prediction, p.decision, p.entity, p.features, p.missing, p.stale,
               l.{LABEL} AS label, {known} AS label_available_at,
               date_diff('second', p.request_time, {known}) AS label_delay_s
        FROM logged p LEFT JOIN labels l ON {on}
        QUALIFY row_number() OVER (PARTITION BY p.prediction_id ORDER BY p.prediction_id) = 1
        ORDER BY p.request_time, p.prediction_id""").to_arrow_table()
    target = scored_path(settings, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    return table
