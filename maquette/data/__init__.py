"""Data: where a project's data lives, below every workflow step.

Owns loading sources and computing feature tables into the offline store as Parquet
(`sources`), reading a source file with its event time made UTC (`source_files`), checking
column names the way Feast and pandas read them (`column_names`), the paths of that store,
the DuckDB connection with the project's rules (`sql`), and the Redis server that holds the
online store and the streams (`redis_server`).

May import: `maquette.config`, `maquette.errors`. Nothing else in Maquette.
"""
