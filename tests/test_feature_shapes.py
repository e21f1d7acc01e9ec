"""Feature shapes users have: a view without entities, int64 and string keys, request fields
declared as timestamps, and materialization that covers all history and says why it wrote
nothing. Real Redis (db 14), real Feast, on a small shop repo built in tmp_path."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from feast.types import Bool
from typer.testing import CliRunner

from maquette.cli import app
from maquette.config import Settings, load_settings
from maquette.errors import InvalidEntityFrame
from maquette.features.entity_rows import entity_row, request_time, typed_value
from maquette.features.layer import FeatureLayer
from maquette.features.materialize import MaterializeResult, last_run_notes
from maquette.serving.predictor import Predictor, served_version
from maquette.training.learners import learner_for
from maquette.training.model_types import TrainedModel
from tests.conftest import on_engine

STAMP = pa.timestamp("us", tz="UTC")
JUNE_4 = datetime(2024, 6, 4, tzinfo=UTC)

REPO = """
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String, UnixTimestamp

OFFLINE = "{offline}"
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
category = Entity(name="category", join_keys=["category"], value_type=ValueType.STRING)


def table(name):
    return FileSource(name=name, path=f"{{OFFLINE}}/{{name}}.parquet", timestamp_field="event_timestamp")


# A static table stamped in 2000: materialize must not skip it.
item_facts = FeatureView(name="item_facts", entities=[item], ttl=timedelta(0),
    schema=[Field(name="item_id", dtype=Int64), Field(name="item_price", dtype=Float64)],
    source=table("item"))
user_daily = FeatureView(name="user_daily", entities=[user], ttl=timedelta(days=2),
    schema=[Field(name="user_id", dtype=Int64), Field(name="user_mean_rating", dtype=Float64)],
    source=table("user_daily"))
category_daily = FeatureView(name="category_daily", entities=[category], ttl=timedelta(days=2),
    schema=[Field(name="category", dtype=String), Field(name="category_ratings", dtype=Int64)],
    source=table("category_daily"))
# Feast's pattern for global features: no entities at all.
shop_daily = FeatureView(name="shop_daily", entities=[], ttl=timedelta(days=2),
    schema=[Field(name="shop_ratings", dtype=Int64), Field(name="shop_mean_rating", dtype=Float64)],
    source=table("shop_daily"))
promotions = FeatureView(name="promotions", entities=[], ttl=timedelta(days=1),
    schema=[Field(name="discount", dtype=Float64)], source=table("promotions"))
rating_request = RequestSource(name="rating_request", schema=[
    Field(name="rated_at", dtype=UnixTimestamp), Field(name="basket_size", dtype=Int64)])


@on_demand_feature_view(sources=[rating_request], mode="python",
    schema=[Field(name="rated_hour", dtype=Int64), Field(name="basket_double", dtype=Int64)])
def rating_time(inputs):
    return {{"rated_hour": [t.hour for t in inputs["rated_at"]],
             "basket_double": [2 * n for n in inputs["basket_size"]]}}


rating = FeatureService(name="rating",
    features=[item_facts, user_daily, category_daily, shop_daily, rating_time])
shop_only = FeatureService(name="shop_only", features=[shop_daily])
"""


def _day(d: int) -> datetime:
    return datetime(2024, 6, d, tzinfo=UTC)


def _tables(offline: Path) -> None:
    offline.mkdir(parents=True)
    stamps = lambda *days: pa.array([_day(d) for d in days], STAMP)  # noqa: E731
    long_ago = pa.array([datetime(2000, 1, 1, tzinfo=UTC)] * 3, STAMP)
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array([1, 2, 3], pa.int64()),
                "event_timestamp": long_ago,
                "item_price": [9.5, 20.0, 3.25],
            }
        ),
        offline / "item.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([7, 7, 8], pa.int64()),
                "event_timestamp": stamps(1, 2, 2),
                "user_mean_rating": [3.0, 3.5, 4.0],
            }
        ),
        offline / "user_daily.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "category": ["books", "games"],
                "event_timestamp": stamps(1, 2),
                "category_ratings": pa.array([10, 20], pa.int64()),
            }
        ),
        offline / "category_daily.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "event_timestamp": stamps(1, 2, 3),
                "shop_ratings": pa.array([100, 120, 90], pa.int64()),
                "shop_mean_rating": [3.1, 3.2, 3.3],
            }
        ),
        offline / "shop_daily.parquet",
    )
    empty = pa.table(
        {"event_timestamp": pa.array([], STAMP), "discount": pa.array([], pa.float64())}
    )
    pq.write_table(empty, offline / "promotions.parquet")


@dataclass
class Shop:
    settings: Settings
    layer: FeatureLayer
    first_run: MaterializeResult


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, running_redis: str) -> Shop:
    """The shop repo applied, its Redis db 14 emptied, then materialized once without a start."""
    folder = tmp_path_factory.mktemp("shop")
    url = running_redis.rsplit("/", 1)[0] + "/14"
    (folder / "maquette.yaml").write_text(
        f'redis: {{url: "{url}"}}\nfeast: {{project: shop, feature_service: rating}}\n'
        "serving: {as_of_max_past: 1500w}\n"  # requests as of June 2024
    )
    offline = folder / ".maquette" / "offline"
    _tables(offline)
    repo = folder / "feature_repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(
        "project: shop\nprovider: local\nregistry: ../.maquette/feast/registry.db\n"
        "online_store: {type: redis}\noffline_store: {type: duckdb}\n"
        "entity_key_serialization_version: 3\n"
    )
    (repo / "shop_features.py").write_text(textwrap.dedent(REPO.format(offline=offline)))
    settings = load_settings(folder)
    redis.Redis.from_url(url).flushdb()
    layer = FeatureLayer(settings)
    layer.apply()
    return Shop(settings, layer, layer.materialize_incremental(JUNE_4, explain=True))


ROWS = [
    {"user_id": 7, "item_id": 1, "category": "books", "rated_at": _day(2), "basket_size": 2},
    {"user_id": 9, "item_id": 3, "category": "games", "rated_at": _day(3), "basket_size": 1},
]


def test_first_materialize_covers_all_history_even_a_table_stamped_in_2000(shop: Shop) -> None:
    assert shop.first_run.rows_written == {
        "item_facts": 3,
        "user_daily": 2,
        "category_daily": 2,
        "shop_daily": 1,  # the newest row of a view without entities
        "promotions": 0,
    }
    assert shop.first_run.start == datetime(2000, 1, 1, tzinfo=UTC)
    again = shop.layer.materialize_incremental(datetime(2024, 6, 5, tzinfo=UTC), explain=True)
    assert again.start == JUNE_4  # then each view continues where it stopped
    assert set(again.rows_written.values()) == {0}


def test_a_view_with_nothing_written_says_why(shop: Shop) -> None:
    assert "promotions.parquet is empty" in shop.first_run.notes["promotions"]
    # The `materialize` flow returns rows written only: the CLI works the notes out again.
    run = shop.layer.materialize_incremental(datetime(2024, 6, 6, tzinfo=UTC), explain=True)
    views = FeatureLayer(shop.settings).feature_views()  # as recorded in the registry file
    assert last_run_notes(views, run.rows_written) == run.notes
    assert "are all older than that range (an earlier run covered them" in run.notes["shop_daily"]
    window = shop.layer.materialize(
        datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 7, 2, tzinfo=UTC), explain=True
    )
    assert "no rows between 2024-07-01 00:00 and 2024-07-02 00:00" in window.notes["shop_daily"]
    assert "(2024-06-01 .. 2024-06-03) are all older than that range" in window.notes["shop_daily"]
    late = shop.layer.materialize(
        datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 8, 1, tzinfo=UTC), explain=True
    )
    # Unasked, nothing scans the tables to explain (the hourly flow and replays never ask).
    assert not shop.layer.materialize(
        datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 7, 2, tzinfo=UTC)
    ).notes
    assert "older than its TTL" in late.notes["user_daily"]
    assert "item_facts" not in late.notes or "TTL" not in late.notes["item_facts"]  # no TTL


def test_entityless_view_reads_online_exactly_as_feasts_own_read(shop: Shop) -> None:
    ours = shop.layer.online_features(ROWS, "rating", as_of=JUNE_4)
    feast = shop.layer.store.get_online_features(
        features=shop.layer.feature_service("rating"), entity_rows=ROWS
    ).to_dict()
    assert {name: feast[name] for name in ours.names} == ours.to_dict()
    assert ours.to_dict()["shop_ratings"] == [90, 90]  # the newest row, for every request
    assert ours.to_dict()["user_mean_rating"] == [3.5, None]  # int keys; user 9 is unknown
    keys = shop.layer.request_keys("rating")  # none for the view without entities
    assert sorted(keys) == ["basket_size", "category", "item_id", "rated_at", "user_id"]
    alone = shop.layer.online_features([{}], ["shop_daily:shop_mean_rating"], as_of=JUNE_4)
    assert alone.values == [{"shop_mean_rating": 3.3}] and alone.missing(0) == []


def test_training_frame_of_an_entityless_view_is_point_in_time(shop: Shop) -> None:
    entities = pd.DataFrame(ROWS).assign(event_timestamp=lambda f: f["rated_at"])
    frame = shop.layer.training_frame(entities, "rating").to_pydict()
    assert frame["shop_ratings"] == [120, 90]
    assert frame["rated_hour"] == [0, 0] and frame["basket_double"] == [4, 2]


@pytest.mark.spark
def test_training_frame_on_spark_equals_duckdbs_with_int_keys_nulls_and_no_entities(
    shop: Shop,
) -> None:
    rows = pa.Table.from_pylist(
        [
            *ROWS,
            {
                "user_id": None,
                "item_id": 3,
                "category": None,
                "rated_at": _day(3),
                "basket_size": 3,
            },
        ],
        schema=pa.schema(
            [
                ("user_id", pa.int64()),
                ("item_id", pa.int64()),
                ("category", pa.string()),
                ("rated_at", STAMP),
                ("basket_size", pa.int64()),
            ]
        ),
    )
    on_duckdb = shop.layer.training_frame(rows, "rating", timestamp_column="rated_at")
    on_spark = FeatureLayer(on_engine(shop.settings, "spark"))
    assert on_spark.training_frame(rows, "rating", timestamp_column="rated_at") == on_duckdb
    assert on_duckdb["shop_ratings"].to_pylist() == [120, 90, 90]  # not vacuous
    assert on_duckdb["user_mean_rating"].to_pylist()[2] is None  # a null key matches nothing
    none = rows.slice(0, 0)  # a batch run's empty file scores no rows on either engine
    empty = on_spark.training_frame(none, "rating", timestamp_column="rated_at")
    assert empty == shop.layer.training_frame(none, "rating", timestamp_column="rated_at")


def test_typed_entity_rows_follow_the_repos_declarations(shop: Shop) -> None:
    row = entity_row(
        shop.layer,
        {"user_id": "7", "category": "books", "rated_at": "2024-06-02T13:00", "basket_size": "2"},
    )
    assert row == {
        "user_id": 7,
        "category": "books",
        "rated_at": datetime(2024, 6, 2, 13, tzinfo=UTC),  # declared UnixTimestamp, no zone: UTC
        "basket_size": 2,
    }
    # A name that only looks like a time is not one unless the repo declares it so.
    assert entity_row(shop.layer, {"day_time": "2024-06-02"}) == {"day_time": "2024-06-02"}
    assert entity_row(shop.layer, {"rated_at": "1717333200"})["rated_at"] == datetime(
        2024, 6, 2, 13, tzinfo=UTC
    )
    with pytest.raises(InvalidEntityFrame, match="user_id='seven' is not a Int64"):
        entity_row(shop.layer, {"user_id": "seven"})


def test_features_get_reads_int_keys_entityless_views_and_declared_times(shop: Shop) -> None:
    words = ["user_id=7", "item_id=1", "category=books", "rated_at=2024-06-02T13:00Z"]
    result = CliRunner().invoke(
        app,
        ["features", "get", *words, "basket_size=3", "--project", str(shop.settings.project_dir)],
    )
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines()]
    lines = {row[0]: row[1:] for row in cells if row}
    assert lines["user_mean_rating"][0] == "3.5"
    assert lines["shop_ratings"][0] == "90"
    assert lines["rated_hour"][0] == "13"
    assert lines["basket_double"][0] == "6"


def test_features_get_of_a_service_of_views_without_entities_needs_no_key(shop: Shop) -> None:
    argv = [
        "features",
        "get",
        "--service",
        "shop_only",
        "--project",
        str(shop.settings.project_dir),
    ]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert re.search(r"shop_ratings\W+90\W", result.output), result.output


def test_service_serves_int_keys_and_entityless_views_and_parses_only_declared_times(
    shop: Shop,
) -> None:
    features = ["item_price", "user_mean_rating", "shop_ratings", "rated_hour", "basket_double"]
    x = pd.DataFrame(
        {"item_price": [1.0, 2.0, 3.0], "user_mean_rating": [3.0, 4.0, 5.0]}
        | {f: [1.0, 2.0, 4.0] for f in features[2:]}
    )
    learner = learner_for("linear", "regression")
    model = TrainedModel(
        "rating",
        "regression",
        "linear",
        features,
        {},
        learner,
        learner.fit(x, [1.0, 2.0, 3.0], x, [1.0, 2.0, 3.0], {}).model,
    )
    served = served_version(shop.layer, "rating:v1", model, "rating")
    predictor = Predictor(shop.settings, log=False, any_version=True)  # library mode: any version
    predictor._versions[served.tag] = served  # what loading a registered version gives
    row = {"user_id": 7, "item_id": 1, "category": "books", "rated_at": "2024-06-02T13:00:00Z"}
    (answer,) = predictor.predict([{**row, "basket_size": 3}], "rating:v1", as_of=JUNE_4)
    assert answer.missing_features == [] and answer.stale_features == []
    with pytest.raises(InvalidEntityFrame, match="'rated_at' is 'soon', not an ISO time"):
        predictor.predict([{**row, "rated_at": "soon", "basket_size": 3}], "rating:v1")


def test_materialize_command_prints_why_a_view_got_nothing(shop: Shop) -> None:
    argv = ["features", "materialize", "--view", "promotions", "--end", "2024-06-04"]
    result = CliRunner().invoke(app, [*argv, "--project", str(shop.settings.project_dir)])
    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())
    assert "promotions" in words and "is empty: run `maquette data load`" in words


def test_request_times_read_iso_before_unix_seconds_and_booleans_refuse_other_words() -> None:
    # "20240601" is ISO 8601's basic date, not 20 million seconds after 1970.
    assert request_time("20240601", "t", naive_is_utc=True) == datetime(2024, 6, 1, tzinfo=UTC)
    assert request_time("1717236000", "t") == datetime(2024, 6, 1, 10, tzinfo=UTC)
    with pytest.raises(InvalidEntityFrame, match="not an ISO time"):
        request_time("٣", "t")  # an Arabic-Indic digit is not a number of seconds
    assert typed_value("flag", "yes", Bool) is True
    assert typed_value("flag", "0", Bool) is False
    with pytest.raises(InvalidEntityFrame, match="'maybe' is not a Bool"):
        typed_value("flag", "maybe", Bool)
