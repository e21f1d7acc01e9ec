from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maquette.config import Settings, load_settings
from maquette.data import sources as datasets
from maquette.errors import ConfigError, DataNotLoaded
from maquette.stream.backfill import load_dataset


def _sql(settings: Settings, query: str) -> list[tuple]:  # type: ignore[type-arg]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    off = settings.offline_store
    con.execute(
        f"CREATE VIEW flights AS SELECT * FROM read_parquet('{off}/sources/flights.parquet')"
    )
    for name in ("carrier_daily", "route_daily", "origin_daily", "weather_hourly"):
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{off}/{name}.parquet')")
    return con.execute(query).fetchall()


def test_every_table_has_microsecond_utc_timestamps(loaded_project: Settings) -> None:
    for path in loaded_project.offline_store.rglob("*.parquet"):
        for field in pq.read_schema(path):
            if pa.types.is_timestamp(field.type):
                assert field.type == pa.timestamp("us", tz="UTC"), (path.name, field)


def test_flights_are_all_loaded_with_labels_only_for_flights_that_arrived(
    loaded_project: Settings,
) -> None:
    [(rows, cancelled, labelled_cancelled, late_mismatch)] = _sql(
        loaded_project,
        """
        SELECT count(*), count(*) FILTER (cancelled),
               count(*) FILTER (cancelled AND arr_delay IS NOT NULL),
               count(*) FILTER (is_late IS DISTINCT FROM (arr_delay > 15))
        FROM flights""",
    )
    assert rows == 336_776
    assert cancelled == 8_255
    assert labelled_cancelled == 0 and late_mismatch == 0


def test_daily_features_use_only_what_was_observable_before_the_day(
    loaded_project: Settings,
) -> None:
    # Recompute a carrier/day by hand: flights scheduled in the 7 days before local midnight,
    # departure delays only once departed, arrival delays only once landed.
    [(dep, arr, rate, count)] = _sql(
        loaded_project,
        """
        SELECT carrier_dep_delay_7d, carrier_arr_delay_7d, carrier_cancel_rate_7d, carrier_flights_7d
        FROM carrier_daily WHERE carrier = 'UA' AND event_timestamp = TIMESTAMPTZ '2013-07-10 04:00:00+00'""",
    )
    day = datetime(2013, 7, 10, 4, tzinfo=UTC)
    [(h_dep, h_arr, h_rate, h_count)] = _sql(
        loaded_project,
        f"""
        SELECT avg(dep_delay) FILTER (departed_at < '{day}'), avg(arr_delay) FILTER (arrived_at < '{day}'),
               avg(cancelled::INT), count(*)
        FROM flights WHERE carrier = 'UA'
          AND event_timestamp >= TIMESTAMPTZ '{day}' - INTERVAL 7 DAY AND event_timestamp < '{day}'""",
    )
    assert (dep, arr, rate, count) == pytest.approx((h_dep, h_arr, h_rate, h_count))
    late_landings = _sql(
        loaded_project,
        f"""
        SELECT count(*) FROM flights WHERE carrier = 'UA' AND event_timestamp < '{day}'
          AND event_timestamp >= TIMESTAMPTZ '{day}' - INTERVAL 7 DAY AND arrived_at >= '{day}'""",
    )
    assert late_landings[0][0] > 0  # the rule above really excluded some flights


def test_daily_rows_are_stamped_at_local_midnight(loaded_project: Settings) -> None:
    hours = _sql(
        loaded_project,
        """
        SELECT DISTINCT hour(timezone('America/New_York', event_timestamp)) FROM route_daily""",
    )
    assert hours == [(0,)]


def test_naive_timestamps_are_refused_with_a_remedy() -> None:
    table = pa.table({"t": pa.array([datetime(2013, 1, 1)], pa.timestamp("us"))})
    with pytest.raises(ConfigError, match="without a time zone") as info:
        datasets.with_utc_microseconds(table)
    assert "Localize" in info.value.remedy


def test_nanosecond_timestamps_are_written_as_microseconds() -> None:
    table = pa.table({"t": pa.array([1_000_000_001], pa.timestamp("ns", tz="UTC"))})
    assert datasets.with_utc_microseconds(table).schema.field("t").type == pa.timestamp(
        "us", tz="UTC"
    )


def test_a_users_own_csv_and_sql_go_through_the_same_loader(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text(
        "order_id,store,ts,amount\n1,a,2024-01-01T10:00:00Z,5.0\n2,a,2024-01-02T10:00:00Z,7.0\n"
    )
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "store_daily.sql").write_text(
        "SELECT store, ts AS event_timestamp, sum(amount) AS revenue FROM orders GROUP BY ALL"
    )
    (tmp_path / "maquette.yaml").write_text(
        "dataset:\n  module: null\n  sources: {orders: orders.csv}\n  feature_sql: sql\n  entity_source: orders\n"
    )
    settings = load_settings(tmp_path)
    summaries = {t.name: t for t in load_dataset(settings)}
    assert summaries["orders"].rows == 2 and summaries["store_daily"].kind == "feature"
    schema = pq.read_schema(datasets.feature_table_path(settings, "store_daily"))
    assert schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")


def test_broken_feature_sql_names_the_table(tmp_path: Path) -> None:
    (tmp_path / "o.csv").write_text("a\n1\n")
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "bad.sql").write_text("SELECT nope FROM o")
    (tmp_path / "maquette.yaml").write_text(
        "dataset:\n  module: null\n  sources: {o: o.csv}\n  feature_sql: sql\n"
    )
    with pytest.raises(ConfigError, match="feature table 'bad'"):
        load_dataset(load_settings(tmp_path))


def test_missing_tables_say_to_run_data_load(tmp_path: Path) -> None:
    with pytest.raises(DataNotLoaded) as info:
        datasets.require_loaded(load_settings(tmp_path), "flights")
    assert "maquette data load" in info.value.remedy
