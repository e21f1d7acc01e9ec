"""Feature computation on Spark (`feast.offline_engine: spark`), for tables that outgrow one
process: training frames by an as-of join on Spark, materialization's reads by Feast's Spark
offline store (its pull-latest and pull-all), in a Spark session Feast's store configures.

The registry keeps its FileSources over the offline store's Parquet files, so switching the
engine is a setting, not an edit of the feature repo nor a new `feast apply`: Feast's store
gets `SparkSource`s over the same files. The training frame does not use Feast's Spark join
(`get_historical_features`): it joins each entity row with every feature row of its key inside
the TTL, which Spark runs as a join on the key and a filter, quadratic on a key of few values
(`spark_join` says more). Maquette's as-of join gives Feast's values: tests/test_features.py
compares it with Feast's own store on the demo's data, tests/test_offline_engines.py checks
each rule (TTL to the whole second, newest created time, null keys and times match nothing)
on both engines. Rows come back in the entity frame's order, columns typed as DuckDB reads
them. The driver collects each frame: what outgrows one process is the join, not its result.

Feast's Ray offline store (0.67) was measured first and not chosen: it ignores view TTLs
(tests/test_offline_engines.py shows it) and took 160 s for a 2,000-row training frame.

Spark runs in a JVM started by this process on first use (Java 17 and the `spark` extra);
`local[N]` keeps its driver on loopback, another master joins a cluster, whose workers must
read the offline store's paths (a shared file system mounted at the same path).
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView

from maquette.config import Settings
from maquette.data.sql import duckdb_connection
from maquette.errors import ConfigError
from maquette.features.point_in_time import ViewSource, _lit

if TYPE_CHECKING:
    from feast import RepoConfig
    from feast.infra.offline_stores.offline_store import RetrievalJob
    from pyspark.sql import SparkSession

ROW = "maquette_row__"  # the entity row's position, carried through Spark's join
# One Spark call at a time per process: the session is shared, and the temporary views Feast's
# store registers for a call are dropped after it (another call's must not be).
_SPARK_CALLS = threading.RLock()
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def uses_spark(settings: Settings) -> bool:
    return settings.feast.offline_engine == "spark"


def spark_settings(settings: Settings) -> dict[str, str]:
    """The Spark session's settings: the master, UTC (Feast's Spark SQL writes times as UTC
    without a zone), no console progress bars, scratch space under the state folder."""
    conf = {
        "spark.master": settings.feast.spark_master,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # The driver collects the whole training frame; Spark's default is 1 GB. As DuckDB's
        # default cap (spark_conf overrides it).
        "spark.driver.memory": "4g",
    }
    if settings.feast.spark_master.startswith("local"):
        # Spark's driver listens for its executors: on one machine, loopback only; its scratch
        # space (shuffles, spills) in the state folder, as DuckDB's.
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.local.dir"] = str(settings.state_dir / "spark_tmp")
    # The JVM's own log: errors only (its warnings at start-up are about this machine's
    # hostname and Hadoop's native library, nothing a user acts on).
    conf["spark.driver.extraJavaOptions"] = (
        f"-Dlog4j2.configurationFile={_log_config(settings).resolve().as_uri()}"
    )
    conf.update({k: _conf_text(v) for k, v in settings.feast.spark_conf.items()})
    conf["spark.sql.session.timeZone"] = "UTC"
    return conf


def _conf_text(value: str | int | float | bool) -> str:
    """A Spark setting as Spark spells it (YAML gives numbers and booleans)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


_LOG4J = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n
"""


def _log_config(settings: Settings) -> Path:
    return settings.state_dir / "spark_tmp" / "log4j2.properties"


def spark_repo_config(settings: Settings) -> RepoConfig:
    """Feast's configuration with its Spark offline store (the registry and online store as
    `repo_config`'s)."""
    from feast import RepoConfig

    from maquette.features.online_store import feast_online_store

    return RepoConfig(
        project=settings.feast.project,
        provider="local",
        registry={"registry_type": "file", "path": str(settings.registry_path)},
        online_store=feast_online_store(settings),
        offline_store={"type": "spark", "spark_conf": spark_settings(settings)},
        entity_key_serialization_version=3,
        repo_path=str(settings.feature_repo),
    )


def spark_session(settings: Settings) -> SparkSession:
    """This process's Spark session (started on first use, ~5 s: a JVM). One per process: its
    master and JVM settings are the first caller's."""
    try:
        from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
            get_spark_session_or_start_new_with_repoconfig,
        )
    except ImportError as exc:
        raise ConfigError(
            "feast.offline_engine is spark, but pyspark is not installed.",
            "Install the spark extra (uv sync --extra spark, or pip install 'maquette[spark]'), "
            "or set feast.offline_engine: duckdb.",
        ) from exc
    log_config = _log_config(settings)
    log_config.parent.mkdir(parents=True, exist_ok=True)
    if not log_config.is_file():
        log_config.write_text(_LOG4J)
    config = spark_repo_config(settings)
    try:
        with quiet():
            session = get_spark_session_or_start_new_with_repoconfig(config.offline_store)
    except Exception as exc:  # pyspark's errors name the JVM's failure in many shapes
        raise ConfigError(
            f"Spark could not start on {settings.feast.spark_master}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "Spark needs Java 17 (apt-get install openjdk-17-jre-headless, or set JAVA_HOME) "
            "and a reachable feast.spark_master; or set feast.offline_engine: duckdb.",
        ) from exc
    session.sparkContext.setLogLevel("ERROR")
    running = session.sparkContext.master
    if running != settings.feast.spark_master:
        raise ConfigError(
            f"this process's Spark session runs on {running}, not on feast.spark_master "
            f"({settings.feast.spark_master}): a process has one Spark session.",
            "Use one spark_master per process (a new process for another), or stop the "
            "session first (SparkSession.getActiveSession().stop()).",
        )
    # A session started before (a notebook's) keeps its own settings; the time zone is a
    # runtime one, and Feast's SQL writes its time literals as UTC.
    session.conf.set("spark.sql.session.timeZone", "UTC")
    return session


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Feast's Spark store prints to stdout and warns that it is experimental on every call:
    neither is for Maquette's user (the CLI's stdout carries its own output)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _spark_source(source: ViewSource) -> Any:
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    return SparkSource(
        name=f"{source.name}_spark",
        path=_uri(source.path),
        file_format="parquet",
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_field or "",
    )


def spark_view(view: FeatureView, source: ViewSource) -> FeatureView:
    """The view as Feast's Spark store reads it: a copy whose batch source is a SparkSource
    over the same Parquet file (the registry's view is left as it is)."""
    spark_view = copy.copy(view)
    spark_view.batch_source = _spark_source(source)
    return spark_view


def _duckdb_types(source: ViewSource) -> dict[str, pa.DataType]:
    """Each column's type as DuckDB reads the view's table (what the DuckDB engine returns)."""
    query = f"SELECT * FROM read_parquet({_lit(source.path)}) LIMIT 0"
    schema = duckdb_connection().sql(query).to_arrow_table().schema
    return {field.name: field.type for field in schema}


def _typed_as_tables(table: pa.Table, sources: Sequence[ViewSource]) -> pa.Table:
    """Feature and key columns cast to the types DuckDB reads them as, so a frame from Spark
    has the DuckDB engine's schema (Spark has no unsigned integers, nor dictionaries)."""
    for source in sources:
        types = _duckdb_types(source)
        for name in (*source.features, *source.join_keys):
            i = table.schema.get_field_index(name)
            if i >= 0 and name in types:
                table = table.set_column(i, name, table[name].cast(types[name]))
    return table


def _refuse_spark_names(source: ViewSource) -> None:
    """Spark reads `a.b` as a field of `a`, and Feast's Spark SQL leaves names unquoted."""
    for name in (*source.join_keys, *source.features, source.timestamp_field):
        if not _PLAIN_NAME.fullmatch(name):
            raise ConfigError(
                f"feature view {source.name!r} has a column {name!r}, which Spark cannot read "
                "by name (feast.offline_engine: spark).",
                "Rename it to letters, digits and underscores (e.g. in the table's SQL), or set "
                "feast.offline_engine: duckdb.",
            )


def _uri(path: Path) -> str:
    """A local file as a URI, so a cluster whose default file system is HDFS reads it here."""
    return path.resolve().as_uri()


def spark_join(
    settings: Settings,
    entities: pa.Table,
    sources: Sequence[ViewSource],
    timestamp_column: str,
) -> pa.Table:
    """The features of each view as of every entity row's time, TTL applied, in the rows'
    order (the features only; the caller attaches them to its rows): an as-of join on Spark.

    Feast's Spark store joins each entity row with every feature row of its key inside the
    TTL, a range join Spark runs as a join on the key and a filter: on a key of few values
    (the demo's three airports) that is quadratic (20,000 rows took 117-143 s; 336,776 ran out of
    4 GB). Here each view's rows and the entity rows are sorted together by key and time, and
    every entity row takes the newest feature row before it (at the same time included), as
    DuckDB's ASOF join does: Feast's semantics, the equality tests check them on both.
    """
    if entities.num_rows == 0:  # nothing to join: typed empty columns, no Spark
        empty = {
            name: pa.array([], _duckdb_types(source)[name])
            for source in sources
            for name in source.features
        }
        return pa.table(empty) if empty else pa.table({})
    for source in sources:
        _refuse_spark_names(source)
    session = spark_session(settings)
    keys = sorted({k for s in sources for k in s.join_keys})
    # Only the keys, the time and the row's position go to Spark, as Arrow (a pandas detour
    # would turn integer keys with nulls into doubles).
    narrow = pa.table(
        {
            **{k: _signed(entities[k]) for k in keys},
            "__t": entities[timestamp_column].cast(pa.timestamp("us", tz="UTC")),
            ROW: pa.array(range(entities.num_rows), pa.int64()),
        }
    )
    out = pa.table({ROW: narrow[ROW]})
    bounds = pc.min_max(narrow["__t"]).as_py()
    span = (bounds["min"], bounds["max"]) if bounds["min"] is not None else None
    with _SPARK_CALLS:
        rows = session.createDataFrame(narrow)
        for source in sources:
            found = _as_of(session, rows, source, span).toArrow().sort_by(ROW)
            for name in source.features:
                out = out.append_column(name, found[name])
    return _typed_as_tables(out.drop_columns([ROW]), sources)


def _signed(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Unsigned integer keys as int64 (Spark has no unsigned types; a value past int64's range
    is an error, not a wrapped number)."""
    if pa.types.is_unsigned_integer(column.type):
        return column.cast(pa.int64())
    return column


@contextlib.contextmanager
def _temp_views_dropped(session: SparkSession) -> Iterator[None]:
    """Feast's store names each Parquet read a temporary view and never drops it: dropped
    after the call, so a long-lived process does not collect them."""
    before = {t.name for t in session.catalog.listTables() if t.isTemporary}
    try:
        yield
    finally:
        for table in session.catalog.listTables():
            if table.isTemporary and table.name not in before:
                session.catalog.dropTempView(table.name)


def _as_of(
    session: SparkSession,
    rows: Any,
    source: ViewSource,
    span: tuple[datetime, datetime] | None,
) -> Any:
    """One view's features for each entity row (ROW, features), as a Spark DataFrame.
    `span`: the oldest and newest entity time (only feature rows that can match are read, as
    on DuckDB: a batch scored in chunks reads each chunk's slice of the views)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = list(source.join_keys)
    created = source.created_timestamp_field
    table = session.read.parquet(_uri(source.path))
    feature_rows = table.select(
        *keys,
        F.col(source.timestamp_field).cast("timestamp").alias("__t"),
        *source.features,
        *([created] if created and created not in source.features else []),
    )
    if span is not None:
        first, last = span
        feature_rows = feature_rows.where(F.col("__t") <= F.lit(last))
        if source.ttl is not None:
            feature_rows = feature_rows.where(F.col("__t") >= F.lit(first - source.ttl))
    if created:  # one row per key and time: the newest created
        newest = Window.partitionBy(*keys, "__t").orderBy(F.col(created).desc_nulls_last())
        feature_rows = feature_rows.withColumn("__n", F.row_number().over(newest)).where("__n = 1")
    # A null key matches nothing (Feast joins keys by equality), nor does a row without time.
    for column in (*keys, "__t"):
        feature_rows = feature_rows.where(F.col(column).isNotNull())
    # The feature row as one struct: an entity row takes the newest struct before it, even
    # one whose features are null (Feast takes the newest row, not the newest non-null value).
    found = F.struct(F.col("__t").alias("__ts"), *source.features)
    feature_rows = feature_rows.select(
        *keys,
        "__t",
        F.lit(0).alias("__entity"),
        F.lit(None).cast("long").alias(ROW),
        found.alias("__found"),
    )
    entity_rows = rows.select(
        *keys,
        "__t",
        F.lit(1).alias("__entity"),
        ROW,
        F.lit(None).cast(feature_rows.schema["__found"].dataType).alias("__found"),
    )
    # At equal times the feature row sorts first: a row stamped at the entity's time is used.
    window = (
        (Window.partitionBy(*keys) if keys else Window)
        .orderBy("__t", "__entity")
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    joined = (
        feature_rows.unionByName(entity_rows)
        .withColumn("__found", F.last("__found", ignorenulls=True).over(window))
        .where("__entity = 1")
    )
    fresh = F.col("__found").isNotNull()
    if source.ttl is not None:
        # Whole seconds, as Feast's SQL and DuckDB's join write the TTL.
        ttl_micros = int(source.ttl.total_seconds()) * 1_000_000
        fresh = fresh & (
            F.unix_micros(F.col("__found.__ts")) + F.lit(ttl_micros) >= F.unix_micros("__t")
        )
    return joined.select(
        ROW, *[F.when(fresh, F.col(f"__found.{name}")).alias(name) for name in source.features]
    )


def spark_latest_rows(
    settings: Settings, source: ViewSource, start: datetime, end: datetime
) -> pa.Table:
    """Feast's Spark pull-latest: the newest row per entity with start <= event time <= end
    (keys, features, `__ts`), as `latest_rows_sql` gives it on DuckDB."""
    _refuse_spark_names(source)
    session = spark_session(settings)  # first: without pyspark it says what to install
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStore

    with _SPARK_CALLS, _temp_views_dropped(session), quiet():
        job = SparkOfflineStore.pull_latest_from_table_or_query(
            config=spark_repo_config(settings),
            data_source=_spark_source(source),
            join_key_columns=list(source.join_keys),
            feature_name_columns=list(source.features),
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_field,
            start_date=start,
            end_date=end,
        )
        rows = spark_rows(job)
    return _rows_with_time(rows, source)


def spark_rows_between(
    settings: Settings, source: ViewSource, lo: datetime, hi: datetime
) -> pa.Table:
    """Every row with lo <= event time <= hi (keys, features, `__ts`), in event time order
    (ties: created time, nulls first), through Feast's Spark pull-all."""
    _refuse_spark_names(source)
    session = spark_session(settings)
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStore

    with _SPARK_CALLS, _temp_views_dropped(session), quiet():
        job = SparkOfflineStore.pull_all_from_table_or_query(
            config=spark_repo_config(settings),
            data_source=_spark_source(source),
            join_key_columns=list(source.join_keys),
            feature_name_columns=list(source.features),
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_field,
            start_date=lo,
            end_date=hi,
        )
        rows = spark_rows(job)
    out = _rows_with_time(rows, source)
    created = source.created_timestamp_field
    if not created:
        return out.sort_by("__ts")
    # Sorted so that an entity's last row is the one pull-latest keeps: newest event time,
    # then newest created time, a null created time losing.
    ordered = out.append_column("__created", rows[created]).sort_by(
        [("__ts", "ascending"), ("__created", "ascending", "at_start")]
    )
    return ordered.drop_columns(["__created"])


def spark_rows(job: RetrievalJob) -> pa.Table:
    """A Spark job's rows straight from Spark as Arrow (Feast's `to_arrow` goes through pandas,
    which turns integers with nulls into doubles)."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkRetrievalJob

    assert isinstance(job, SparkRetrievalJob)
    rows: pa.Table = job.to_spark_df().toArrow()
    return rows


def _rows_with_time(rows: pa.Table, source: ViewSource) -> pa.Table:
    """keys, features (typed as the table holds them) and `__ts`, the event time in UTC."""
    ts = rows[source.timestamp_field].cast(pa.timestamp("us", tz="UTC"))
    keep = [c for c in (*source.join_keys, *source.features) if c in rows.column_names]
    return _typed_as_tables(rows.select(keep), [source]).append_column("__ts", ts)
