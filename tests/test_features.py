"""The feature layer against real Feast and a real Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest
import redis

from maquette.config import Settings
from maquette.errors import DataNotLoaded, FeatureNotFound, InvalidEntityFrame, StoreUnavailable
from maquette.features.layer import FeatureLayer
from maquette.features.online import NOT_FOUND, OUTSIDE_MAX_AGE, PRESENT
from maquette.platform.demo import entity_frame
from tests.conftest import free_port, on_engine

KEYS = [
    "flight_id",
    "event_timestamp",
    "scheduled_departure",
    "origin",
    "tailnum",
    "carrier",
    "route",
]


@pytest.fixture(scope="module")
def sample_entities(loaded_project: Settings) -> pd.DataFrame:
    frame = entity_frame(loaded_project).select(KEYS).to_pandas()
    # Stock Feast's historical retrieval is the reference; give it a sample with every key set.
    return frame.dropna().sample(2_000, random_state=13).reset_index(drop=True)


@pytest.fixture(scope="module", params=["duckdb", pytest.param("spark", marks=pytest.mark.spark)])
def engine_layer(request: pytest.FixtureRequest, loaded_project: Settings) -> FeatureLayer:
    """The feature layer computing training frames on DuckDB, then on Spark: the
    training-frame tests run on both (their reference stays Feast's own DuckDB store)."""
    return FeatureLayer(on_engine(loaded_project, request.param))


def _equal(ours: pd.Series, feast: pd.Series) -> bool:
    both_null = ours.isna() & feast.isna()
    return bool(((ours == feast) | both_null).all())


def test_training_frame_equals_feasts_historical_features(
    engine_layer: FeatureLayer, sample_entities: pd.DataFrame
) -> None:
    ours = engine_layer.training_frame(sample_entities).to_pandas()
    service = engine_layer.feature_service("flight_delay")
    feast = engine_layer.store.get_historical_features(
        entity_df=sample_entities, features=service
    ).to_df()
    ours = ours.sort_values("flight_id").reset_index(drop=True)
    feast = feast.sort_values("flight_id").reset_index(drop=True)
    assert sorted(ours.columns) == sorted(feast.columns)
    mismatched = [c for c in ours.columns if not _equal(ours[c], feast[c])]
    assert mismatched == []
    assert ours["temp"].notna().sum() > 1_900  # the comparison is not vacuous


def test_training_frame_keeps_rows_in_order_and_null_keys(
    engine_layer: FeatureLayer, loaded_project: Settings
) -> None:
    entities = entity_frame(loaded_project).slice(0, 5_000)
    frame = engine_layer.training_frame(entities)
    assert frame["flight_id"].to_pylist() == entities["flight_id"].to_pylist()
    assert frame.num_rows == 5_000
    no_plane = frame.filter(pa.compute.is_null(frame["tailnum"]))
    assert no_plane.num_rows > 0 and no_plane["seats"].null_count == no_plane.num_rows


def test_training_frame_applies_the_view_ttl(engine_layer: FeatureLayer) -> None:
    # The last weather observation is 2013-12-30 23:00 UTC; weather_hourly's TTL is 3 hours.
    last = datetime(2013, 12, 30, 23, tzinfo=UTC)
    times = [last, last + timedelta(hours=2, minutes=59), last + timedelta(hours=3, minutes=1)]
    entities = pd.DataFrame({"origin": ["JFK"] * 3, "event_timestamp": times})
    frame = engine_layer.training_frame(entities, ["weather_hourly:temp"]).to_pandas()
    assert frame["temp"].notna().tolist() == [True, True, False]


def test_training_frame_never_uses_a_value_from_the_future(engine_layer: FeatureLayer) -> None:
    # Just before the 06:00 observation, the 05:00 one is the newest known value.
    entities = pd.DataFrame(
        {
            "origin": ["EWR", "EWR"],
            "event_timestamp": [
                datetime(2013, 1, 1, 10, 59, 59, tzinfo=UTC),
                datetime(2013, 1, 1, 11, 0, tzinfo=UTC),
            ],
        }
    )
    temps = engine_layer.training_frame(entities, ["weather_hourly:temp"])["temp"].to_pylist()
    weather = pd.read_parquet(engine_layer.settings.offline_store / "weather_hourly.parquet")
    ewr = weather[weather.origin == "EWR"].set_index("event_timestamp")["temp"]
    assert temps == [
        ewr[pd.Timestamp("2013-01-01 10:00", tz="UTC")],
        ewr[pd.Timestamp("2013-01-01 11:00", tz="UTC")],
    ]


def test_training_frame_keeps_integer_features_as_integers(
    engine_layer: FeatureLayer, sample_entities: pd.DataFrame
) -> None:
    # Stock Feast returns nullable integer features as float64; ours stay int64 with nulls.
    frame = engine_layer.training_frame(sample_entities)
    assert frame.schema.field("seats").type == pa.int64()
    assert frame.schema.field("carrier_flights_7d").type == pa.int64()
    feast = engine_layer.store.get_historical_features(
        entity_df=sample_entities.head(50), features=["plane:seats"]
    ).to_df()
    assert feast["seats"].dtype == "float64"


def _rows(settings: Settings, n: int, offset: int = 300_000) -> list[dict[str, object]]:
    frame = (
        entity_frame(settings)
        .slice(offset, n * 2)
        .select(["origin", "tailnum", "carrier", "route", "scheduled_departure"])
        .drop_null()
    )
    return frame.slice(0, n).to_pylist()


def test_online_features_equal_feasts_online_read(
    online_layer: FeatureLayer, loaded_project: Settings
) -> None:
    rows = _rows(loaded_project, 40)
    ours = online_layer.online_features(rows).to_dict()
    feast = online_layer.store.get_online_features(
        features=online_layer.feature_service("flight_delay"), entity_rows=rows
    ).to_dict()
    assert {name: feast[name] for name in ours} == ours
    assert all(v is not None for v in ours["route_arr_delay_28d"])


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.spark)])
def test_maquette_materialize_writes_what_stock_feast_writes(
    loaded_project: Settings, engine: str
) -> None:
    layer = FeatureLayer(on_engine(loaded_project, engine))
    client = redis.Redis.from_url(str(loaded_project.redis.url))

    def dump() -> dict[bytes, dict[bytes, bytes]]:
        return {key: client.hgetall(key) for key in client.scan_iter(count=10_000)}

    start, end = datetime(2013, 1, 1, tzinfo=UTC), datetime(2014, 1, 2, tzinfo=UTC)
    client.flushdb()
    layer.store.materialize(start, end)
    stock = dump()
    client.flushdb()
    result = layer.materialize(start, end)
    assert dump() == stock
    assert sum(result.rows_written.values()) == 3_587  # 19 of them the stream views' keys
    assert len(stock) == 3_565  # origins and carriers carry several views in one hash


def test_materialize_never_overwrites_a_newer_value(online_layer: FeatureLayer) -> None:
    again = online_layer.materialize(
        datetime(2013, 1, 1, tzinfo=UTC), datetime(2014, 1, 2, tzinfo=UTC)
    )
    assert set(again.rows_written.values()) == {0}
    older = online_layer.materialize(
        datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 6, 1, tzinfo=UTC)
    )
    assert sum(older.rows_read.values()) > 0 and set(older.rows_written.values()) == {0}
    values = online_layer.online_features([{"route": "JFK-LAX"}], ["route_daily:route_flights_28d"])
    assert values.values[0]["route_flights_28d"] > 0


def test_materialize_incremental_resumes_where_the_last_run_ended(
    feature_layer: FeatureLayer,
) -> None:
    result = feature_layer.materialize_incremental(datetime(2014, 1, 3, tzinfo=UTC))
    view = feature_layer.store.get_feature_view("plane")
    assert view.most_recent_end_time == datetime(2014, 1, 3, tzinfo=UTC)
    assert result.start == datetime(2014, 1, 2, tzinfo=UTC)


def test_online_read_flags_stale_values_that_feast_calls_present(
    online_layer: FeatureLayer,
) -> None:
    row = {
        "origin": "JFK",
        "tailnum": "N14228",
        "carrier": "UA",
        "route": "EWR-IAH",
        "scheduled_departure": datetime(2013, 12, 31, 15, tzinfo=UTC),
    }
    ours = online_layer.online_features([row], as_of=datetime(2014, 1, 1, tzinfo=UTC))
    assert ours.statuses[0]["temp"] == OUTSIDE_MAX_AGE
    assert ours.stale(0)[:1] == ["temp"]
    assert ours.statuses[0]["seats"] == PRESENT  # plane facts never expire
    feast = online_layer.store.get_online_features(
        features=["weather_hourly:temp"], entity_rows=[row]
    )
    assert feast.proto.results[0].statuses[0] == 1  # PRESENT, although the value is a day old
    fresh = online_layer.online_features([row], as_of=datetime(2013, 12, 31, 0, tzinfo=UTC))
    assert fresh.statuses[0]["temp"] == PRESENT


def test_unknown_entities_are_not_found_and_still_answered(online_layer: FeatureLayer) -> None:
    row = {
        "origin": "XXX",
        "tailnum": "NOPE",
        "carrier": "UA",
        "route": "XXX-YYY",
        "scheduled_departure": datetime(2013, 12, 31, 15, tzinfo=UTC),
    }
    result = online_layer.online_features([row])
    assert result.values[0]["temp"] is None and result.statuses[0]["temp"] == NOT_FOUND
    assert set(result.missing(0)) >= {"temp", "seats", "route_flights_28d"}
    assert result.statuses[0]["dep_hour_local"] == PRESENT


def test_unknown_feature_service_lists_the_known_ones(feature_layer: FeatureLayer) -> None:
    with pytest.raises(FeatureNotFound, match="unknown feature service 'nope'") as info:
        feature_layer.training_frame(pd.DataFrame(), "nope")
    assert "flight_delay" in info.value.remedy


def test_unknown_feature_view_and_feature_list_what_exists(feature_layer: FeatureLayer) -> None:
    with pytest.raises(FeatureNotFound, match="unknown feature view 'wether'") as info:
        feature_layer.online_features([{"origin": "JFK"}], ["wether:temp"])
    assert "weather_hourly" in info.value.remedy
    with pytest.raises(FeatureNotFound, match="has no feature 'tmp'") as info:
        feature_layer.online_features([{"origin": "JFK"}], ["weather_hourly:tmp"])
    assert "temp" in info.value.remedy


def test_entity_frame_missing_a_key_says_which(feature_layer: FeatureLayer) -> None:
    frame = pd.DataFrame({"origin": ["JFK"], "event_timestamp": [datetime(2013, 5, 1, tzinfo=UTC)]})
    with pytest.raises(
        InvalidEntityFrame,
        match=r"lacks column\(s\) \['carrier', 'route', 'scheduled_departure', 'tailnum'\]",
    ):
        feature_layer.training_frame(frame)


def test_entity_frame_without_timestamp_or_timezone_is_refused(feature_layer: FeatureLayer) -> None:
    with pytest.raises(InvalidEntityFrame, match="no timestamp column 'event_timestamp'"):
        feature_layer.training_frame(pd.DataFrame({"origin": ["JFK"]}), ["weather_hourly:temp"])
    naive = pd.DataFrame({"origin": ["JFK"], "event_timestamp": [datetime(2013, 5, 1)]})
    with pytest.raises(InvalidEntityFrame, match="not a timezone-aware timestamp"):
        feature_layer.training_frame(naive, ["weather_hourly:temp"])


def test_online_row_missing_a_join_key_says_which(feature_layer: FeatureLayer) -> None:
    with pytest.raises(InvalidEntityFrame, match=r"lacks join key\(s\) \['origin'\]"):
        feature_layer.online_features([{"route": "JFK-LAX"}], ["weather_hourly:temp"])


def test_redis_down_names_the_url_and_how_to_start_it(loaded_project: Settings) -> None:
    dead = loaded_project.model_copy(deep=True)
    dead.redis.url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(
        StoreUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0 is unreachable"
    ) as info:
        FeatureLayer(dead).online_features([{"origin": "JFK"}], ["weather_hourly:temp"])
    assert "maquette redis start" in info.value.remedy
    with pytest.raises(StoreUnavailable, match="cannot connect to Redis"):
        FeatureLayer(dead).materialize(
            datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 1, 2, tzinfo=UTC)
        )


def test_nothing_applied_yet_says_to_run_apply(tmp_path, running_redis) -> None:  # type: ignore[no-untyped-def]
    from maquette.config import load_settings
    from tests.conftest import make_project

    settings = load_settings(make_project(tmp_path / "p", running_redis))
    with pytest.raises(DataNotLoaded, match="registry") as info:
        FeatureLayer(settings).online_features([{"origin": "JFK"}], ["weather_hourly:temp"])
    assert "maquette features apply" in info.value.remedy
