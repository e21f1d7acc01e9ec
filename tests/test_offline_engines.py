"""The offline engines (issue 21, item 3): the point-in-time rules on DuckDB and on Spark, row by
row on a table built to hit each one; and why Feast's Ray offline store is not one of them.

The feature layer's equality tests (tests/test_features.py, tests/test_replay_materialize.py,
tests/test_feature_shapes.py) run on both engines against Feast's own store; the demo's tables
have no created timestamps, no duplicate (key, time) rows and whole-second TTLs, so the rules
those bring are checked here. Feast's Ray store (0.67) was the first candidate for the engine;
the last test shows where it gives other values than Feast's own DuckDB store: it ignores a
view's TTL. If a Feast release fixes that, it fails, and the Ray store is worth measuring again
(ARCHITECTURE.md, "Feature computation beyond one process").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore, RepoConfig

from maquette.config import Settings, load_settings
from maquette.features.layer import FeatureLayer, repo_config
from maquette.features.point_in_time import ViewSource, point_in_time_join
from maquette.features.spark_engine import spark_join
from tests.conftest import make_project, on_engine

T0 = datetime(2024, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
STAMP = pa.timestamp("us", tz="UTC")


def _events(path: Path) -> ViewSource:
    """A view's table with every rule in it; its TTL is 1 h 0.5 s, which Feast writes as
    whole seconds (3600)."""
    created = [T0, T0 + HOUR, None, None, T0, None, T0, T0]
    table = pa.table(
        {
            "key": ["a", "a", "a", "a", "b", "b", None, "a"],
            "event_timestamp": pa.array(
                [T0, T0, T0 + HOUR, T0 + 3 * HOUR, T0, T0, T0, None], STAMP
            ),
            "created": pa.array(created, STAMP),
            "value": pa.array([1, 2, 3, None, 10, 11, 50, 99], pa.int64()),
        }
    )
    pq.write_table(table, path)
    return ViewSource(
        "events",
        path,
        "event_timestamp",
        "created",
        ("key",),
        ("value",),
        HOUR + timedelta(seconds=0.5),
    )


# (key, time) -> the value Feast's rules give
EXPECTED = [
    (("a", T0), 2),  # two rows at one time: the newest created wins
    (("a", T0 + HOUR / 2), 2),  # inside the TTL
    (("a", T0 + HOUR), 3),  # a row stamped at the entity's time is used
    (("a", T0 + 2 * HOUR), 3),  # exactly one TTL later: still fresh
    (("a", T0 + 2 * HOUR + timedelta(seconds=0.25)), None),  # past the whole-second TTL
    (("a", T0 + 3 * HOUR), None),  # the newest row has a null value: null, not an older value
    (("b", T0), 10),  # a null created time loses to a set one
    ((None, T0), None),  # a null key matches nothing, not the row keyed null
    (("c", T0), None),  # an unknown key
    (("a", T0 - timedelta(seconds=1)), None),  # before every row (the row without time too)
]


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.spark)])
def test_point_in_time_rules_on_each_engine(
    engine: str, tmp_path: Path, running_redis: str
) -> None:
    source = _events(tmp_path / "events.parquet")
    entities = pa.table(
        {
            "key": pa.array([k for (k, _), _ in EXPECTED], pa.string()),
            "event_timestamp": pa.array([t for (_, t), _ in EXPECTED], STAMP),
        }
    )
    if engine == "duckdb":
        frame = point_in_time_join(entities, [source], "event_timestamp")
    else:
        settings = on_engine(load_settings(make_project(tmp_path / "p", running_redis)), "spark")
        frame = spark_join(settings, entities, [source], "event_timestamp")
    assert frame["value"].to_pylist() == [value for _, value in EXPECTED]
    assert frame.schema.field("value").type == pa.int64()


@pytest.mark.ray
def test_feasts_ray_store_ignores_the_view_ttl(
    feature_layer: FeatureLayer, loaded_project: Settings, tmp_path: Path
) -> None:
    import ray

    # The last weather observation is 2013-12-30 23:00 UTC; weather_hourly's TTL is 3 hours.
    last = datetime(2013, 12, 30, 23, tzinfo=UTC)
    entities = pd.DataFrame(
        {
            "origin": ["JFK"] * 2,
            "event_timestamp": [last + timedelta(hours=2), last + timedelta(hours=5)],
        }
    )
    ours = feature_layer.training_frame(entities, ["weather_hourly:temp"]).to_pandas()
    stock = feature_layer.store.get_historical_features(
        entity_df=entities, features=["weather_hourly:temp"]
    ).to_df()
    config = repo_config(loaded_project).model_dump(by_alias=True)
    config["offline_store"] = {
        "type": "ray",
        "storage_path": str(tmp_path / "ray"),
        "ray_conf": {"num_cpus": 1, "include_dashboard": False},
    }
    try:
        on_ray = FeatureStore(config=RepoConfig(**config)).get_historical_features(
            entity_df=entities, features=["weather_hourly:temp"]
        )
        ray_values = on_ray.to_df().sort_values("event_timestamp")["temp"].tolist()
    finally:
        ray.shutdown()

    assert ours["temp"].notna().tolist() == [True, False]  # five hours on: past the TTL
    assert stock.sort_values("event_timestamp")["temp"].notna().tolist() == [True, False]
    assert pd.notna(ray_values[1]), "Feast's Ray store now applies the TTL: measure it again"
    assert ray_values[1] == ray_values[0]  # the 23:00 observation, five hours later
