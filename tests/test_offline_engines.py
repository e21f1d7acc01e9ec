"""Why training frames go to Spark and not to Feast's Ray offline store (issue 21, item 3).

`feast.offline_engine: spark` runs the feature layer's equality tests (tests/test_features.py,
tests/test_replay_materialize.py) on Feast's Spark store. Feast's Ray store (0.67) was the
first candidate; this test shows where it gives other values than Feast's own DuckDB store and
Maquette's join: it ignores a view's TTL. If a Feast release fixes that, this test fails and the
Ray store is worth measuring again (ARCHITECTURE.md, "Feature computation beyond one process").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore, RepoConfig

from maquette.config import Settings
from maquette.features.layer import FeatureLayer, repo_config

pytestmark = pytest.mark.ray


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
