"""A replay materializes along its clock without a registry write per slot: the online store
ends as the per-slot incremental runs leave it, and Feast's registry knows where it stopped."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from maquette.config import Settings, load_settings
from maquette.features.layer import FeatureLayer
from maquette.features.online import PRESENT
from maquette.platform import replay
from tests.conftest import copy_feature_tables, make_project, on_engine

# Two days across midnight: hourly weather and the daily rows both move along the clock.
START = datetime(2013, 12, 2, tzinfo=UTC)
END = datetime(2013, 12, 4, tzinfo=UTC)
SLOT = timedelta(hours=1)


def _project(folder: Path, redis_db_url: str, loaded: Settings) -> FeatureLayer:
    """A project with the loaded tables, applied, materialized up to START, in its own db."""
    settings = load_settings(make_project(folder, redis_db_url))
    copy_feature_tables(loaded, settings)
    layer = FeatureLayer(settings)
    layer.apply()
    layer.clear_online()
    layer.materialize(datetime(2013, 1, 1, tzinfo=UTC), START)
    return layer


def _online_store(layer: FeatureLayer) -> dict[bytes, dict[bytes, bytes]]:
    """Every online hash of the layer's Feast project, field by field (Feast's keys end with
    the project's name; other tests' projects may share the database)."""
    client, project = layer.redis, layer.settings.feast.project.encode()
    return {
        key: client.hgetall(key)
        for key in client.scan_iter(count=5000, _type="HASH")
        if key.endswith(project)
    }


def _batch_views(layer: FeatureLayer) -> list[str]:
    return [v.name for v in layer.feature_views() if not replay._pushed(v)]


@pytest.fixture(scope="module")
def replayed_and_stepped(
    tmp_path_factory: pytest.TempPathFactory, running_redis: str, loaded_project: Settings
) -> Iterator[tuple[FeatureLayer, FeatureLayer, replay.ReplayResult]]:
    """The same two days materialized by a replay, and by an incremental run per slot."""
    base = running_redis.rsplit("/", 1)[0]
    replayed = _project(tmp_path_factory.mktemp("replayed"), f"{base}/6", loaded_project)
    stepped = _project(tmp_path_factory.mktemp("stepped"), f"{base}/7", loaded_project)
    result = replay.replay(
        replayed.settings,
        pd.DataFrame({"event_timestamp": pd.Series([], dtype="datetime64[ns, UTC]")}),
        [],
        lambda rows, when: [],
        START,
        END,
        slot=SLOT,
        layer=replayed,
    )
    views = _batch_views(stepped)
    clock = START
    while clock <= END:  # the per-slot way: one registry write per view and slot
        stepped.materialize_incremental(clock, views=views)
        clock += SLOT
    yield replayed, stepped, result
    for layer in (replayed, stepped):
        layer.clear_online()


def test_replay_online_values_equal_an_incremental_run_per_slot(
    replayed_and_stepped: tuple[FeatureLayer, FeatureLayer, replay.ReplayResult],
) -> None:
    replayed, stepped, result = replayed_and_stepped
    assert result.slots == 48
    ours, theirs = _online_store(replayed), _online_store(stepped)
    assert len(ours) > 100  # not vacuous: planes, routes, carriers, airports
    assert ours == theirs
    # December 3rd's weather was written along the clock, not only the materialized history.
    weather = replayed.online_features(
        [{"origin": "JFK"}], ["weather_hourly:temp"], as_of=END
    ).statuses[0]["temp"]
    assert weather == PRESENT


def test_replay_records_where_it_stopped_in_feasts_registry(
    replayed_and_stepped: tuple[FeatureLayer, FeatureLayer, replay.ReplayResult],
) -> None:
    replayed, _, _ = replayed_and_stepped
    # A fresh store reads the registry file, as `feast materialize-incremental` would.
    fresh = FeatureLayer(replayed.settings)
    for name in _batch_views(fresh):
        view = fresh.store.get_feature_view(name)
        assert view.most_recent_end_time == END, name
        # The history run up to START, then one interval for the whole replay.
        assert view.materialization_intervals[1:] == [(START, END)], name
    after = fresh.materialize_incremental(END + timedelta(hours=1), views=_batch_views(fresh))
    assert after.start == END


@pytest.mark.spark
def test_replay_on_spark_leaves_the_online_store_as_on_duckdb(
    tmp_path_factory: pytest.TempPathFactory,
    running_redis: str,
    loaded_project: Settings,
    replayed_and_stepped: tuple[FeatureLayer, FeatureLayer, replay.ReplayResult],
) -> None:
    # The history run, the first step of each view and the rows read ahead for the later
    # steps all come from Feast's Spark store here.
    _, stepped, _ = replayed_and_stepped
    base = running_redis.rsplit("/", 1)[0]
    folder = tmp_path_factory.mktemp("replayed-spark")
    settings = on_engine(load_settings(make_project(folder, f"{base}/8")), "spark")
    copy_feature_tables(loaded_project, settings)
    layer = FeatureLayer(settings)
    layer.apply()
    layer.clear_online()
    try:
        layer.materialize(datetime(2013, 1, 1, tzinfo=UTC), START)
        result = replay.replay(
            settings,
            pd.DataFrame({"event_timestamp": pd.Series([], dtype="datetime64[ns, UTC]")}),
            [],
            lambda rows, when: [],
            START,
            END,
            slot=SLOT,
            layer=layer,
        )
        assert result.slots == 48
        ours = _online_store(layer)
        assert len(ours) > 100 and ours == _online_store(stepped)
    finally:
        layer.clear_online()
