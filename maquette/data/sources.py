"""Load a dataset into the offline store: source tables and batch feature tables as Parquet.

A dataset is either a Python module (`source_tables()` returning Arrow tables by name, and
`FEATURE_TABLES`, DuckDB SQL by feature-table name) or, for a user's own data, Parquet/CSV paths
plus a folder of `<feature_table>.sql` files. Both go through `load_tables` (the public
`load_dataset`, in `maquette.stream.backfill`, adds the stream's backfill). Every timestamp is
written as microsecond UTC: Feast 0.67 on DuckDB 2.0 cannot read nanosecond Parquet timestamps
(`Unimplemented type for cast (TIMESTAMPTZ_NS -> TIMESTAMP)`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from maquette.config import Settings
from maquette.data.sql import duckdb_connection
from maquette.errors import ConfigError, DataNotLoaded

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TableSummary:
    """One Parquet table written to the offline store."""

    name: str
    kind: str  # "source" or "feature"
    path: Path
    rows: int
    first_event: datetime | None
    last_event: datetime | None


def sources_dir(settings: Settings) -> Path:
    return settings.offline_store / "sources"


def source_path(settings: Settings, name: str) -> Path:
    return sources_dir(settings) / f"{name}.parquet"


def feature_table_path(settings: Settings, name: str) -> Path:
    return settings.offline_store / f"{name}.parquet"


def require_loaded(settings: Settings, name: str) -> Path:
    """Path of a loaded table, or DataNotLoaded naming the command that loads it."""
    for path in (feature_table_path(settings, name), source_path(settings, name)):
        if path.is_file():
            return path
    raise DataNotLoaded(
        f"table {name!r} is not in the offline store ({settings.offline_store}).",
        "Run `maquette data load` first.",
    )


def with_utc_microseconds(table: pa.Table) -> pa.Table:
    """Cast every timestamp column to microsecond UTC; refuse naive timestamps."""
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_timestamp(field.type):
            if field.type.tz is None:
                raise ConfigError(
                    f"column {field.name!r} holds timestamps without a time zone.",
                    "Localize it (e.g. to UTC) in your source before loading.",
                )
            # Truncate sub-microsecond parts: Feast on DuckDB cannot read nanoseconds.
            column = column.cast(TIMESTAMP_TYPE, safe=False)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _write_parquet(table: pa.Table, path: Path) -> None:
    # Write beside the target then rename, so a reader never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=128 * 1024)
    os.replace(tmp, path)


def _dataset_parts(
    settings: Settings,
) -> tuple[Callable[[], Mapping[str, pa.Table]], dict[str, str]]:
    spec = settings.dataset
    if spec.module:
        try:
            module = importlib.import_module(spec.module)
        except ImportError as exc:
            raise ConfigError(
                f"dataset.module {spec.module!r} cannot be imported: {exc}",
                "Fix dataset.module in maquette.yaml.",
            ) from exc
        return module.source_tables, dict(module.FEATURE_TABLES)
    if not spec.sources:
        raise ConfigError(
            "the dataset names neither a module nor source files.",
            "Set dataset.module, or dataset.sources and dataset.feature_sql.",
        )
    sql_dir = settings.path(spec.feature_sql) if spec.feature_sql else None
    feature_sql = {p.stem: p.read_text() for p in sorted(sql_dir.glob("*.sql"))} if sql_dir else {}
    return (lambda: _read_source_files(settings)), feature_sql


def _read_source_files(settings: Settings) -> dict[str, pa.Table]:
    con = duckdb_connection()
    tables = {}
    for name, rel in settings.dataset.sources.items():
        path = settings.path(rel)
        if not path.exists():
            raise ConfigError(
                f"dataset source {name!r}: {path} does not exist.",
                "Fix dataset.sources in maquette.yaml.",
            )
        reader = "read_csv_auto" if path.suffix.lower() in {".csv", ".tsv"} else "read_parquet"
        tables[name] = con.sql(f"SELECT * FROM {reader}(?)", params=[str(path)]).to_arrow_table()
    return tables


def _sql_str(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _summary(con: duckdb.DuckDBPyConnection, name: str, kind: str, path: Path) -> TableSummary:
    cols = [
        r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    ]
    ts = "event_timestamp" if "event_timestamp" in cols else None
    rng = f"min({ts}), max({ts})" if ts else "NULL, NULL"
    ((rows, first, last),) = con.execute(
        f"SELECT count(*), {rng} FROM read_parquet(?)", [str(path)]
    ).fetchall()
    return TableSummary(name, kind, path, rows, first, last)


def load_tables(
    settings: Settings, progress: Callable[[str], None] | None = None
) -> list[TableSummary]:
    """Write the dataset's source tables and computed feature tables into the offline store."""
    load_sources, feature_sql = _dataset_parts(settings)
    con = duckdb_connection()
    summaries = []
    for name, table in load_sources().items():
        if progress:
            progress(f"source {name}")
        path = source_path(settings, name)
        _write_parquet(with_utc_microseconds(table), path)
        con.execute(
            f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet({_sql_str(path)})'
        )
        summaries.append(_summary(con, name, "source", path))
    for name, sql in feature_sql.items():
        if progress:
            progress(f"feature table {name}")
        try:
            table = con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise ConfigError(
                f"feature table {name!r}: its SQL failed: {exc}",
                "Fix the SQL of that feature table.",
            ) from exc
        path = feature_table_path(settings, name)
        _write_parquet(with_utc_microseconds(table), path)
        summaries.append(_summary(con, name, "feature", path))
    return summaries
