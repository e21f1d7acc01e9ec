"""A source file read as its owner wrote it, with its event time made UTC.

`dataset.sources.NAME.timestamp` names the column holding each row's time and how it is written:
numbers since 1970-01-01 UTC (`unit: s | ms | us | ns`), ISO 8601 text (`unit: iso`; naive
values are UTC), or naive wall-clock times in a zone (`zone: America/Chicago`). `read_source`
converts that column in place to TIMESTAMPTZ (UTC) and copies it to `event_timestamp`; other
naive time columns of a source with a zone (or `unit: iso`) are read in the same zone. A value
that does not read that way, or a naive time with no zone declared, is a DataError naming the
table, the column, one value and the YAML to write: never a silently shifted time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from maquette.data.column_names import refuse_case_clashes
from maquette.data.sql import sql_identifier, sql_literal
from maquette.data_settings import SourceSettings, SourceTimestampSettings
from maquette.errors import DataError

_SECONDS_PER_UNIT = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
# A unit that puts a time outside these years is the wrong unit (ms read as s: year 56000).
_POSSIBLE = (
    datetime(1900, 1, 1, tzinfo=UTC).timestamp(),
    datetime(2200, 1, 1, tzinfo=UTC).timestamp(),
)
# A unit is suggested when it puts a number here, and a 1970 time is refused when one does.
_LIKELY = (
    datetime(1980, 1, 1, tzinfo=UTC).timestamp(),
    datetime(2100, 1, 1, tzinfo=UTC).timestamp(),
)
_SOURCE = "_maquette_source"  # the DuckDB table of the file being read
# Text that ends in a zone after its time of day: Z, an offset, or a zone name.
_HAS_ZONE = (
    r"\d:\d{2}(:\d{2}(\.\d+)?)?\s*([Zz]|[+-]\d{2}(:?\d{2})?|[A-Za-z][A-Za-z_]*(/[A-Za-z_]+)*)$"
)
_INTEGER = r"[+-]?\d+"


@dataclass(frozen=True)
class _Column:
    """The declared time column of one source, and what the YAML must say about it."""

    table: str
    source: SourceSettings
    timestamp: SourceTimestampSettings
    kind: str  # "aware", "naive", "number" or "text"

    @property
    def sql(self) -> str:
        return sql_identifier(self.timestamp.column)

    def error(self, message: str, fix: dict[str, str] | None, value: object = None) -> DataError:
        """A DataError naming the table and column, with the YAML that declares `fix`."""
        head = f"source {self.table!r}, column {self.timestamp.column!r}: {message}"
        if fix is None:
            remedy = f"Fix or remove the rows holding {value!r}, or declare another column."
        else:
            remedy = "Declare how the column is written, in maquette.yaml:\n" + _yaml(self, fix)
        return DataError(head, remedy)


def _yaml(column: _Column, fix: dict[str, str]) -> str:
    settings = ", ".join(f"{k}: {v}" for k, v in {"column": column.timestamp.column, **fix}.items())
    lines = [
        "dataset:",
        "  sources:",
        f"    {column.table}:",
        f"      path: {column.source.path}",
        f"      timestamp: {{{settings}}}",
    ]
    if fix.get("unit") == "iso":
        lines.append("      # naive local times: zone: <IANA name, e.g. America/Chicago>, no unit")
    return "\n".join("    " + line for line in lines)


def _kind(duckdb_type: str) -> str:
    if duckdb_type == "TIMESTAMP WITH TIME ZONE":
        return "aware"
    if duckdb_type.startswith("TIMESTAMP") or duckdb_type == "DATE":
        return "naive"
    if duckdb_type == "VARCHAR":
        return "text"
    return "number" if _is_number_type(duckdb_type) else duckdb_type


def _is_number_type(duckdb_type: str) -> bool:
    return duckdb_type.startswith("DECIMAL") or duckdb_type in {
        "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
        "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE",
    }  # fmt: skip


def _likely_timestamp(value: object) -> dict[str, str] | None:
    """The `timestamp:` setting under which `value` reads as a time in 1980-2100, if any."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        for unit, per in _SECONDS_PER_UNIT.items():
            if _LIKELY[0] <= number / per < _LIKELY[1]:
                return {"unit": unit}
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return {"unit": "iso"} if parsed.tzinfo is None else {}


def read_source(
    con: duckdb.DuckDBPyConnection, name: str, source: SourceSettings, path: Path
) -> pa.Table:
    """The file at `path` as an Arrow table, its declared time column converted to UTC."""
    csv = path.suffix.lower() in {".csv", ".tsv"}
    header = _csv_header(con, path) if csv else pq.read_schema(path).names
    refuse_case_clashes(f"source {name!r}", header, f"{path.name} (its header)")
    ts = source.timestamp
    options = ""
    if ts is not None:
        _check_declared_column(name, ts, header)
        # Read the declared column as written: DuckDB's sniffer would read naive text as UTC.
        options = f", types = {{{sql_literal(ts.column)}: 'VARCHAR'}}" if csv else ""
    reader = "read_csv_auto" if csv else "read_parquet"
    # Read once into a table: the checks below scan it several times.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_SOURCE} AS "
        f"SELECT * FROM {reader}({sql_literal(path)}{options})"
    )
    types = dict(
        con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {_SOURCE})").fetchall()
    )
    zone = None if ts is None else (ts.zone or ("UTC" if ts.unit == "iso" else None))
    replaced = _naive_columns_in_zone(name, source, types, zone)
    added = ""
    if ts is not None:
        column = _Column(name, source, ts, _kind(types[ts.column]))
        replaced[ts.column] = _utc_expression(con, column)
        if ts.column != "event_timestamp":
            added = f", {column.sql} AS event_timestamp"
    replace = ", ".join(f"{expr} AS {sql_identifier(c)}" for c, expr in replaced.items())
    inner = (
        f"SELECT * REPLACE ({replace}) FROM {_SOURCE}" if replace else f"SELECT * FROM {_SOURCE}"
    )
    table = con.sql(f"SELECT *{added} FROM ({inner})").to_arrow_table()
    con.execute(f"DROP TABLE {_SOURCE}")
    return table


def _csv_header(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    # The header as written: with header=true DuckDB renames `A` beside `a` to `a_1`.
    rows = con.execute(
        "SELECT * FROM read_csv_auto(?, header = false, all_varchar = true) LIMIT 1", [str(path)]
    ).fetchall()
    return [str(v) for v in rows[0]] if rows else []


def _check_declared_column(name: str, ts: SourceTimestampSettings, header: list[str]) -> None:
    if ts.column not in header:
        same = [c for c in header if c.lower() == ts.column.lower()]
        hint = f"It is spelt {same[0]!r} there." if same else f"Its columns: {', '.join(header)}."
        raise DataError(
            f"source {name!r} has no column {ts.column!r} (dataset.sources.{name}.timestamp).",
            f"Name one of its columns. {hint}",
        )
    if ts.column != "event_timestamp" and "event_timestamp" in {c.lower() for c in header}:
        raise DataError(
            f"source {name!r} holds an event_timestamp column besides {ts.column!r}, which "
            "loading copies to event_timestamp.",
            f"Declare timestamp.column: event_timestamp, or rename that column in {name}'s file.",
        )


def _naive_columns_in_zone(
    name: str, source: SourceSettings, types: dict[str, str], zone: str | None
) -> dict[str, str]:
    """SQL making each naive time column (other than the declared one) UTC, read in `zone`."""
    declared = source.timestamp.column if source.timestamp else None
    # Times only: a DATE (a birthday, a holiday) is a day, not an instant in some zone.
    naive = [c for c, t in types.items() if _kind(t) == "naive" and t != "DATE" and c != declared]
    if naive and zone is None and declared is not None:
        raise DataError(
            f"source {name!r}, column {naive[0]!r}: holds times without a time zone, and "
            f"dataset.sources.{name}.timestamp declares none to read them in.",
            "Add zone: <IANA name> to that timestamp (the zone the source's naive times are "
            "local to), or write the column's times with their zone or offset "
            "(e.g. 2024-06-01T10:00:00Z).",
        )
    if naive and zone is None:
        column = _Column(name, source, SourceTimestampSettings(column=naive[0]), "naive")
        raise column.error(
            "holds times without a time zone (they would be read as UTC, maybe wrongly).",
            {"zone": "<IANA name, e.g. UTC or America/Chicago>"},
        )
    return {
        c: f"timezone({sql_literal(zone)}, CAST({sql_identifier(c)} AS TIMESTAMP))" for c in naive
    }


def _utc_expression(con: duckdb.DuckDBPyConnection, column: _Column) -> str:
    """SQL giving the declared column as TIMESTAMPTZ (UTC), after checking every value reads."""
    unit, zone, c = column.timestamp.unit, column.timestamp.zone, column.sql
    if unit in _SECONDS_PER_UNIT:
        if column.kind not in ("number", "text"):
            fix = {} if column.kind == "aware" else {"zone": "<IANA name, e.g. UTC>"}
            raise column.error(f"holds times, not numbers of {_UNIT_WORDS[unit]} since 1970.", fix)
        _refuse_values(
            con,
            column,
            f"TRY_CAST({c} AS DOUBLE)",
            f"a number of {_UNIT_WORDS[unit]} since 1970-01-01 UTC",
        )
        _refuse_impossible_times(con, column, unit)
        return _epoch_expression(c, unit)
    if column.kind == "number":
        example = _first(con, f"SELECT {c} FROM {_SOURCE} WHERE {c} IS NOT NULL LIMIT 1")
        raise column.error(
            f"holds numbers such as {example!r}, not times.", _likely_timestamp(example), example
        )
    if column.kind == "aware":
        return c
    if column.kind == "naive":
        if zone is None and unit is None:
            raise column.error(
                "holds times without a time zone.", {"zone": "<IANA name, e.g. UTC>"}
            )
        return f"timezone({sql_literal(zone or 'UTC')}, CAST({c} AS TIMESTAMP))"
    if column.kind != "text":
        raise column.error(f"holds {column.kind} values, not times.", None)
    return _text_expression(con, column)


def _text_expression(con: duckdb.DuckDBPyConnection, column: _Column) -> str:
    c, ts = column.sql, column.timestamp
    has_zone = f"regexp_matches(trim({c}), {sql_literal(_HAS_ZONE)})"
    if ts.zone is None and ts.unit is None:
        naive = _first(
            con,
            f"SELECT {c} FROM {_SOURCE} WHERE NOT {has_zone} AND TRY_CAST({c} AS TIMESTAMP) IS NOT NULL LIMIT 1",
        )
        if naive is not None:
            raise column.error(f"{naive!r} has no time zone.", {"zone": "<IANA name, e.g. UTC>"})
    zone = sql_literal(ts.zone or "UTC")
    expression = (
        f"CASE WHEN {has_zone} THEN TRY_CAST(trim({c}) AS TIMESTAMPTZ) "
        f"ELSE timezone({zone}, TRY_CAST(trim({c}) AS TIMESTAMP)) END"
    )
    meaning = "an ISO 8601 time such as 2024-06-01T10:00:00Z" if ts.unit else "a date and time"
    _refuse_values(con, column, expression, meaning)
    return expression


def _epoch_expression(c: str, unit: str) -> str:
    # Whole numbers in integer arithmetic (ns since 1970 exceed a double's 53 bits); others
    # (1717236000.5 s) through a double, rounded to the microsecond Parquet keeps.
    per = _SECONDS_PER_UNIT[unit]
    text = f"trim(CAST({c} AS VARCHAR))"
    whole = f"TRY_CAST({text} AS BIGINT)"
    micros = f"{whole} // 1000" if unit == "ns" else f"{whole} * {1_000_000 // per}"
    fraction = f"CAST(round(TRY_CAST({text} AS DOUBLE) * {1_000_000 / per}) AS BIGINT)"
    return (
        f"timezone('UTC', make_timestamp(CASE WHEN regexp_full_match({text}, "
        f"{sql_literal(_INTEGER)}) THEN {micros} ELSE {fraction} END))"
    )


def _first(con: duckdb.DuckDBPyConnection, query: str) -> object:
    # fetchall, not fetchone: DuckDB 2 refuses new work on a connection with rows left unread.
    rows = con.execute(query).fetchall()
    return rows[0][0] if rows else None


def _refuse_values(
    con: duckdb.DuckDBPyConnection, column: _Column, parsed: str, meaning: str
) -> None:
    c = column.sql
    bad = _first(
        con, f"SELECT {c} FROM {_SOURCE} WHERE {c} IS NOT NULL AND ({parsed}) IS NULL LIMIT 1"
    )
    if bad is not None:
        fix = _likely_timestamp(bad)
        written = {
            k: v for k, v in (("unit", column.timestamp.unit), ("zone", column.timestamp.zone)) if v
        }
        raise column.error(f"{bad!r} is not {meaning}.", fix if fix != written else None, bad)


def _refuse_impossible_times(con: duckdb.DuckDBPyConnection, column: _Column, unit: str) -> None:
    c, per = column.sql, _SECONDS_PER_UNIT[unit]
    # The smallest and largest values, as written in the file (for the message).
    number = f"TRY_CAST({c} AS DOUBLE)"
    lowest, highest = con.execute(
        f"SELECT arg_min({c}, {number}), arg_max({c}, {number}) FROM {_SOURCE}"
    ).fetchall()[0]
    for value in (lowest, highest):
        if value is None:
            continue
        seconds = float(str(value).strip()) / per
        fix = _likely_timestamp(value)
        impossible = not _POSSIBLE[0] <= seconds < _POSSIBLE[1]
        # 1970 is a real time (a static table stamped at 0) unless another unit fits better.
        if impossible or (seconds < _LIKELY[0] and fix is not None and fix != {"unit": unit}):
            year = "beyond 2200" if seconds >= _POSSIBLE[1] else "before 1900"
            if not impossible:
                year = f"in {datetime.fromtimestamp(seconds, UTC):%Y-%m-%d}"
            raise column.error(
                f"{value!r} read as {_UNIT_WORDS[unit]} is a time {year}.", fix, value
            )
