"""DuckDB connections: cursors of one shared in-memory database, private ones where needed."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from maquette.data.sql import duckdb_connection


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[object, ...]:
    return tuple(con.sql(sql).fetchall()[0])


def test_plain_connections_share_a_database_but_not_their_session() -> None:
    first, second = duckdb_connection(), duckdb_connection()
    first.execute("SET TimeZone = 'America/New_York'")
    assert _one(second, "SELECT current_setting('TimeZone')") == ("UTC",)
    assert _one(duckdb_connection(), "SELECT current_setting('TimeZone')") == ("UTC",)
    # Registered tables and TEMP views stay with the connection that made them.
    first.register("rows_in", pa.table({"x": [1, 2]}))
    first.execute("CREATE TEMP VIEW doubled AS SELECT x * 2 AS x FROM rows_in")
    assert _one(first, "SELECT sum(x) FROM doubled") == (6,)
    for name in ("rows_in", "doubled"):
        with pytest.raises(duckdb.CatalogException):
            second.sql(f"SELECT * FROM {name}").fetchall()


def test_a_private_connection_keeps_its_global_settings_to_itself() -> None:
    private = duckdb_connection(private=True)
    private.execute("SET threads = 1")
    private.execute("SET enable_external_access = false")
    private.execute("SET lock_configuration = true")
    shared = duckdb_connection()
    assert _one(shared, "SELECT current_setting('lock_configuration')") == (False,)
    shared.execute("SET TimeZone = 'UTC'")  # still allowed: nothing locked it
    assert _one(shared, "SELECT current_setting('threads')") != (1,)
    # A memory limit is a global setting too: it always gets a database of its own.
    bounded = duckdb_connection(memory_limit="200MB")
    assert _one(shared, "SELECT current_setting('memory_limit')") != (
        _one(bounded, "SELECT current_setting('memory_limit')")
    )
