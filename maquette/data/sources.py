"""Load a dataset into the offline store: source tables and batch feature tables as Parquet.

A dataset is either a Python module (`source_tables()` returning Arrow tables by name, and
`FEATURE_TABLES`, DuckDB SQL by feature-table name) or, for a user's own data, Parquet/CSV paths
(each with its event time's unit or zone: `source_files`) plus a folder of `<feature_table>.sql`
files. Every table's column names are checked before it is written (`column_names`). Both go
through `load_tables` (the public `load_dataset`, in `maquette.stream.backfill`, adds the
stream's backfill). Every timestamp is
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
from maquette.data.column_names import refuse_case_clashes, refuse_misspelt_declared_columns
from maquette.data.source_files import read_source
from maquette.data.sql import duckdb_connection
from maquette.errors import ConfigError, DataError, DataNotLoaded

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


def with_utc_microseconds(table: pa.Table, what: str = "a table", remedy: str = "") -> pa.Table:
    """Cast every timestamp column to microsecond UTC; refuse naive timestamps.

    `what` names the table in the error ("feature table 'x'") and `remedy` says how to give its
    times a zone where they come from (`{column}` in it is replaced by the column's name).
    """
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_timestamp(field.type):
            if field.type.tz is None:
                raise DataError(
                    f"{what}: column {field.name!r} holds timestamps without a time zone.",
                    (remedy or "Localize it (e.g. to UTC) in your source before loading.").format(
                        column=field.name
                    ),
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


def _write_checked(settings: Settings, what: str, table: pa.Table, path: Path, where: str) -> None:
    """Write `table` to `path` once its names and times are as Feast and pandas will read them."""
    refuse_case_clashes(what, table.column_names, where)
    refuse_misspelt_declared_columns(settings, what, path, table.column_names, where)
    remedy = (
        f"Give it a zone in {where}, e.g. `timezone('UTC', {{column}}) AS {{column}}`."
        if what.startswith("feature")
        else ""
    )
    _write_parquet(with_utc_microseconds(table, what, remedy), path)


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
    for name, source in settings.dataset.sources.items():
        path = settings.path(source.path)
        if not path.exists():
            raise ConfigError(
                f"dataset source {name!r}: {path} does not exist.",
                "Fix dataset.sources in maquette.yaml.",
            )
        tables[name] = read_source(con, name, source, path)
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
        _write_checked(settings, f"source {name!r}", table, path, "the source")
        con.execute(
            f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM read_parquet({_sql_str(path)})'
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
        _write_checked(settings, f"feature table {name!r}", table, path, f"{name}'s SQL")
        summaries.append(_summary(con, name, "feature", path))
    return summaries
