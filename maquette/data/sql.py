"""DuckDB connections with the project's rules: every timestamp in UTC, memory bounded on request."""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb


def sql_literal(value: object) -> str:
    """`value` as a single-quoted SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """`name` as a double-quoted SQL identifier (a column or table name)."""
    return '"' + name.replace('"', '""') + '"'


def duckdb_connection(
    *,
    memory_limit: str | None = None,
    spill_dir: Path | None = None,
    quiet: bool = False,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose session time zone is UTC.

    `memory_limit` bounds DuckDB's memory and `spill_dir` is where it spills past that limit;
    `quiet` turns off the progress bar, for processes whose output is a log file. It is off
    too whenever stdout is not a terminal: DuckDB draws it on stdout, where a pipe expects
    only the command's output (`--json` documents, tables).
    """
    con = duckdb.connect()
    # Stored times are UTC instants; a local session zone would shift what SQL prints and
    # truncates (date_trunc, ::DATE), so every connection agrees on UTC.
    con.execute("SET TimeZone = 'UTC'")
    if memory_limit is not None:
        con.execute(f"SET memory_limit = {sql_literal(memory_limit)}")
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {sql_literal(spill_dir)}")
    if quiet or not sys.stdout.isatty():
        con.execute("SET enable_progress_bar = false")
    return con
