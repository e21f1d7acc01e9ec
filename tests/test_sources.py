"""Sources as users have them: event times in their own unit or zone, names checked for case."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maquette.config import Settings, load_settings
from maquette.data.sources import feature_table_path, load_tables, source_path
from maquette.errors import ConfigError, DataError


def _project(folder: Path, sources: str, **files: str) -> Settings:
    """A project whose dataset is `sources` (YAML under dataset.sources) over `files`."""
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    sources = textwrap.indent(textwrap.dedent(sources).strip(), "    ")
    (folder / "maquette.yaml").write_text(f"dataset:\n  feature_sql: sql\n  sources:\n{sources}\n")
    return load_settings(folder)


def _loaded(settings: Settings, table: str, column: str) -> list[datetime]:
    load_tables(settings)
    rows = pq.read_table(source_path(settings, table)).to_pylist()
    assert [r["event_timestamp"] for r in rows] == [r[column] for r in rows]
    return [r[column] for r in rows]


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type,misc]


def test_unix_seconds_load_as_utc_times_with_an_event_timestamp(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "ratings: {path: ratings.csv, timestamp: {column: rated_at, unit: s}}",
        **{"ratings.csv": "user_id,rated_at\n7,1717236000\n9,1717239601\n"},
    )
    # 1717236000 s = 19875 days (2024-06-01) + 10 h.
    assert _loaded(settings, "ratings", "rated_at") == [
        _utc(2024, 6, 1, 10),
        _utc(2024, 6, 1, 11, 0, 1),
    ]
    schema = pq.read_schema(source_path(settings, "ratings"))
    assert schema.field("rated_at").type == pa.timestamp("us", tz="UTC")


def test_unix_milliseconds_keep_their_fraction(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "clicks: {path: clicks.csv, timestamp: {column: ts, unit: ms}}",
        **{"clicks.csv": "ts\n1717236000123\n0\n"},
    )
    assert _loaded(settings, "clicks", "ts") == [
        _utc(2024, 6, 1, 10, 0, 0, 123_000),
        _utc(1970, 1, 1),  # 0 is a time too (a static table stamped at the epoch)
    ]


def test_epoch_numbers_in_parquet_load_in_seconds_and_nanoseconds(tmp_path: Path) -> None:
    table = pa.table({"s": [1717236000.5], "ns": pa.array([1717236000123456789], pa.int64())})
    pq.write_table(table, tmp_path / "events.parquet")
    sources = """
        by_s: {path: events.parquet, timestamp: {column: s, unit: s}}
        by_ns: {path: events.parquet, timestamp: {column: ns, unit: ns}}
    """
    settings = _project(tmp_path, sources)
    assert _loaded(settings, "by_s", "s") == [_utc(2024, 6, 1, 10, 0, 0, 500_000)]
    # Nanoseconds past the microsecond are cut: Parquet keeps microseconds for Feast.
    assert _loaded(settings, "by_ns", "ns") == [_utc(2024, 6, 1, 10, 0, 0, 123_456)]


def test_iso_text_honours_each_offset_and_reads_naive_values_as_utc(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "orders: {path: orders.csv, timestamp: {column: ordered_at, unit: iso}}",
        **{
            "orders.csv": """
                id,ordered_at
                1,2024-06-01T10:00:00+02:00
                2,2024-06-01T10:00:00Z
                3,2024-06-01 10:00:00
                4,2024-06-01T10:00:00-05:30
            """
        },
    )
    assert _loaded(settings, "orders", "ordered_at") == [
        _utc(2024, 6, 1, 8),
        _utc(2024, 6, 1, 10),
        _utc(2024, 6, 1, 10),
        _utc(2024, 6, 1, 15, 30),
    ]


def test_naive_local_times_are_read_in_their_zone_across_daylight_saving(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "weather: {path: weather.csv, timestamp: {column: local_time, zone: America/Chicago}}",
        **{
            "weather.csv": """
                local_time,observed,temp
                2024-01-15 10:00:00,2024-01-15 09:00:00,-3.0
                2024-06-01 10:00:00,2024-06-01 09:00:00,24.5
            """
        },
    )
    # Chicago is UTC-6 in January (CST) and UTC-5 in June (CDT).
    assert _loaded(settings, "weather", "local_time") == [
        _utc(2024, 1, 15, 16),
        _utc(2024, 6, 1, 15),
    ]
    # The source's other naive times are read in the same declared zone.
    observed = pq.read_table(source_path(settings, "weather")).column("observed").to_pylist()
    assert observed == [_utc(2024, 1, 15, 15), _utc(2024, 6, 1, 14)]


def test_a_value_that_is_not_in_the_unit_names_table_column_and_value(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "ratings: {path: ratings.csv, timestamp: {column: rated_at, unit: s}}",
        **{"ratings.csv": "user_id,rated_at\n7,1717236000\n9,yesterday\n"},
    )
    with pytest.raises(DataError) as info:
        load_tables(settings)
    assert str(info.value.message) == (
        "source 'ratings', column 'rated_at': 'yesterday' is not a number of seconds since "
        "1970-01-01 UTC."
    )
    assert "Fix or remove the rows holding 'yesterday'" in info.value.remedy


def test_milliseconds_declared_as_seconds_get_the_yaml_for_milliseconds(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "clicks: {path: data/clicks.csv, timestamp: {column: ts, unit: s}}",
        **{"data/clicks.csv": "ts\n1717236000123\n"},
    )
    with pytest.raises(DataError) as info:
        load_tables(settings)
    assert "source 'clicks', column 'ts': '1717236000123' read as seconds" in info.value.message
    assert info.value.remedy.splitlines()[1:] == [
        "    dataset:",
        "      sources:",
        "        clicks:",
        "          path: data/clicks.csv",
        "          timestamp: {column: ts, unit: ms}",
    ]


def test_epoch_numbers_declared_as_iso_are_told_their_unit(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "ratings: {path: ratings.csv, timestamp: {column: rated_at, unit: iso}}",
        **{"ratings.csv": "rated_at\n1717236000\n"},
    )
    with pytest.raises(DataError, match="'1717236000' is not an ISO 8601 time") as info:
        load_tables(settings)
    assert "timestamp: {column: rated_at, unit: s}" in info.value.remedy


def test_a_naive_event_timestamp_without_a_declared_zone_is_refused(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "visits: visits.csv",
        **{"visits.csv": "shop,event_timestamp\na,2024-06-01 10:00:00\n"},
    )
    with pytest.raises(DataError) as info:
        load_tables(settings)
    assert "column 'event_timestamp': holds times without a time zone" in info.value.message
    assert "timestamp: {column: event_timestamp, zone: <IANA name" in info.value.remedy


def test_an_unknown_zone_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown time zone 'Chicago'"):
        _project(tmp_path, "a: {path: a.csv, timestamp: {column: t, zone: Chicago}}")


def test_a_declared_column_spelt_with_another_case_is_named(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "ratings: {path: ratings.csv, timestamp: {column: rated_at, unit: s}}",
        **{"ratings.csv": "Rated_At\n1717236000\n"},
    )
    with pytest.raises(DataError, match="no column 'rated_at'") as info:
        load_tables(settings)
    assert "spelt 'Rated_At'" in info.value.remedy


def test_a_source_with_two_columns_equal_but_for_case_is_refused(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "games: games.csv",
        **{"games.csv": "day,Blackhawks_Home,blackhawks_home\n2024-01-01,1,0\n"},
    )
    with pytest.raises(DataError) as info:
        load_tables(settings)
    assert info.value.message == (
        "source 'games' has the columns 'Blackhawks_Home' and 'blackhawks_home', equal but for case."
    )


def test_a_feature_table_with_two_columns_equal_but_for_case_is_refused(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "games: games.csv",
        **{
            "games.csv": "Blackhawks_Home\n1\n",
            "sql/game_flags.sql": "SELECT *, Blackhawks_Home = 1 AS blackhawks_home FROM games",
        },
    )
    with pytest.raises(DataError, match="feature table 'game_flags' has the columns"):
        load_tables(settings)
    assert not feature_table_path(settings, "game_flags").exists()


HOCKEY_REPO = """
from datetime import timedelta

from feast import FeatureView, Field, FileSource
from feast.types import Int64

# One row a day for the whole city: a view without entities, as Feast declares them.
game_flags = FeatureView(
    name="game_flags",
    entities=[],
    schema=[Field(name="blackhawks_home", dtype=Int64)],
    source=FileSource(name="game_flags_source", path={table!r}, timestamp_field="event_timestamp"),
    ttl=timedelta(days=2),
)
"""


def _hockey(folder: Path, redis_url: str, sql: str) -> Settings:
    """The issue's case: a source column `Blackhawks_Home`, a Feast field `blackhawks_home`."""
    settings = _project(
        folder,
        "games: {path: games.csv, timestamp: {column: day, zone: America/Chicago}}",
        **{
            "games.csv": "day,Blackhawks_Home\n2024-01-01,1\n2024-01-02,0\n",
            "sql/game_flags.sql": sql,
            "feature_repo/feature_store.yaml": """
                project: hockey
                provider: local
                registry: ../.maquette/feast/registry.db
                online_store: {type: redis}
                offline_store: {type: duckdb}
                entity_key_serialization_version: 3
            """,
        },
    )
    table = feature_table_path(settings, "game_flags")
    (folder / "feature_repo" / "hockey.py").write_text(HOCKEY_REPO.format(table=str(table)))
    with (folder / "maquette.yaml").open("a") as config:
        config.write(
            f'redis: {{url: "{redis_url.rsplit("/", 1)[0]}/13"}}\nfeast: {{project: hockey}}\n'
        )
    return load_settings(folder)


def test_features_apply_names_a_field_its_table_spells_with_another_case(
    tmp_path: Path, running_redis: str
) -> None:
    from maquette.features.layer import FeatureLayer

    # DuckDB answers `blackhawks_home` with the column as the file spells it: Blackhawks_Home.
    settings = _hockey(
        tmp_path, running_redis, "SELECT event_timestamp, blackhawks_home FROM games"
    )
    load_tables(settings)
    with pytest.raises(DataError) as info:
        FeatureLayer(settings).apply()
    assert info.value.message.startswith(
        "the Feast view 'game_flags' declares 'blackhawks_home' but its table "
    )
    assert info.value.message.endswith("has 'Blackhawks_Home'.")
    assert '`"Blackhawks_Home" AS blackhawks_home`' in info.value.remedy
    assert not settings.registry_path.exists()  # refused before Feast registered anything


def test_data_load_refuses_feature_sql_spelling_an_applied_field_otherwise(
    tmp_path: Path, running_redis: str
) -> None:
    from maquette.features.layer import FeatureLayer

    sql = tmp_path / "sql" / "game_flags.sql"
    settings = _hockey(
        tmp_path,
        running_redis,
        'SELECT event_timestamp, "Blackhawks_Home" AS blackhawks_home FROM games',
    )
    load_tables(settings)
    assert FeatureLayer(settings).apply() == ["game_flags"]
    flags = pq.read_table(feature_table_path(settings, "game_flags")).to_pylist()
    # Local midnight in Chicago (CST, UTC-6) is 06:00 UTC.
    assert flags[0] == {"event_timestamp": _utc(2024, 1, 1, 6), "blackhawks_home": 1}
    sql.write_text("SELECT event_timestamp, blackhawks_home FROM games")
    with pytest.raises(DataError) as info:
        load_tables(settings)
    assert info.value.message == (
        "feature table 'game_flags' has the column 'Blackhawks_Home' where the Feast view "
        "'game_flags' declares 'blackhawks_home'."
    )
    assert "game_flags's SQL" in info.value.remedy
    # Renamed in the feature repo too: the record of the last apply no longer blocks the load,
    # and the apply that follows checks the new spelling against the new table.
    repo = settings.feature_repo / "hockey.py"
    repo.write_text(repo.read_text().replace('"blackhawks_home"', '"Blackhawks_Home"'))
    os.utime(repo, (time.time() + 2, time.time() + 2))  # edited after the apply, surely
    sql.write_text('SELECT event_timestamp, "Blackhawks_Home" FROM games')
    load_tables(settings)
    sys.modules.pop("hockey", None)  # Feast imports repo files once per process; a CLI is new
    assert FeatureLayer(settings).apply() == ["game_flags"]


def test_a_plain_path_with_dates_and_aware_times_loads_unchanged(tmp_path: Path) -> None:
    settings = _project(
        tmp_path,
        "stores: stores.csv",
        **{"stores.csv": "store,opened,event_timestamp\na,2019-03-01,2024-06-01T10:00:00Z\n"},
    )
    load_tables(settings)
    [row] = pq.read_table(source_path(settings, "stores")).to_pylist()
    assert row["opened"] == date(2019, 3, 1)  # a day, not an instant: no zone asked for
    assert row["event_timestamp"] == _utc(2024, 6, 1, 10)


def test_epoch_times_beside_naive_local_times_read_the_local_ones_in_the_declared_zone(
    tmp_path: Path,
) -> None:
    # unix seconds are UTC by definition; zone: says where signed_up's wall-clock times are.
    settings = _project(
        tmp_path,
        "ratings: {path: ratings.csv, timestamp: {column: rated_at, unit: s, "
        "zone: America/Chicago}}",
        **{"ratings.csv": "rated_at,signed_up\n1717236000,2024-01-15 10:00:00\n"},
    )
    assert _loaded(settings, "ratings", "rated_at") == [_utc(2024, 6, 1, 10)]
    (row,) = pq.read_table(source_path(settings, "ratings")).to_pylist()
    assert row["signed_up"] == _utc(2024, 1, 15, 16)


def test_duckdb_draws_no_progress_bar_into_output_that_is_not_a_terminal() -> None:
    # DuckDB draws its bar on stdout: piped into jq, a long `--json` query would corrupt it.
    from maquette.data.sql import duckdb_connection

    con = duckdb_connection()  # pytest's captured stdout is not a terminal
    assert con.execute("SELECT current_setting('enable_progress_bar')").fetchall() == [(False,)]
