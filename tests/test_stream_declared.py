"""A stream declared in maquette.yaml, keyed by integers: YAML -> processor -> Feast, backfill, publish.

The project here is not the demo: ratings of items by users, integer ids, windows written in
YAML (no Python StreamDefinition), feature views from `maquette.feast_repo.stream_view`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml
from typer.testing import CliRunner

from maquette.cli import app
from maquette.config import Settings, StreamSettings, load_settings
from maquette.errors import ConfigError, DataError
from maquette.examples.nycflights13.stream import DEPARTURES
from maquette.features.layer import FeatureLayer
from maquette.stream import history, operations
from maquette.stream.aggregations import int_key, int_key_sql, stream_definition
from maquette.stream.backfill import backfill
from maquette.stream.events import publish
from maquette.stream.processor import StreamProcessor
from tests.test_stream import apply_own_repo, fresh

BASE = datetime(2024, 6, 1, tzinfo=UTC)
ITEM_FEATURES = [
    "item_ratings_60m",
    "item_mean_rating_60m",
    "item_min_rating_60m",
    "item_max_rating_60m",
]

STREAM = {
    "stream": "test:declared",
    "dead_letter": "test:declared:dead",
    "events_source": "ratings",
    "backfill_before": None,
    "allowed_lateness_s": 3600,
    "events": {
        "time": "rated_at",
        "fields": {
            "user_id": "int64",
            "item_id": {"type": "int64", "description": "the item rated"},
            "rating": "float64",
            "rated_at": "timestamp",
            "review_id": "int64",
        },
        "tie_break": ["review_id"],
    },
    "aggregations": {
        "item_last_hour": {
            "key": "item_id",
            "value": "rating",
            "window": "1h",
            "features": {
                "item_ratings_60m": "count",
                "item_mean_rating_60m": "mean",
                "item_min_rating_60m": "min",
                "item_max_rating_60m": "max",
            },
        },
        "user_last_day": {
            "key": "user_id",
            "value": "rating",
            "window": 86400,
            "features": {"user_rating_sum_1d": "sum", "user_max_rating_1d": "max"},
        },
    },
}

REPO = '''"""A ratings shop's stream views, declared from maquette.yaml."""

from feast import Entity, ValueType

from maquette.feast_repo import project_settings, stream_view

settings = project_settings(__file__)

item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)

item_last_hour = stream_view(settings, "item_last_hour", entities=[item])
user_last_day = stream_view(settings, "user_last_day", entities=[user])
'''

# (HH:MM on BASE, user, item, rating): the ratings table the backfill and the replay read.
RATINGS = [
    ("09:00", 1, 101, 4.0),
    ("09:00", 2, 102, 3.0),
    ("09:20", 2, 101, 2.0),
    ("09:50", 3, 101, 5.0),
    ("09:50", 1, 101, 3.0),  # same item, same time: one row holding both
    ("10:10", 1, 101, 1.0),  # 09:00 has left the hour (t - 60 min < time <= t)
    ("10:15", 3, 102, 5.0),
    ("11:30", 2, 101, 4.5),
    ("12:00", 1, 103, 2.5),
    ("12:05", 3, 103, 0.5),
]


def at(hhmm: str, micros: int = 0) -> datetime:
    hour, minute = (int(p) for p in hhmm.split(":"))
    return BASE + timedelta(hours=hour, minutes=minute, microseconds=micros)


def rating(hhmm: str, user: Any, item: Any, value: Any, review: int = 0) -> dict[str, Any]:
    return {
        "user_id": user,
        "item_id": item,
        "rating": value,
        "rated_at": at(hhmm),
        "review_id": review,
    }


@pytest.fixture(scope="module")
def declared_project(tmp_path_factory: pytest.TempPathFactory, running_redis: str) -> Settings:
    """A ratings project: the stream declared in YAML, int-keyed views applied, the ratings
    table in its offline store (as `maquette data load` leaves it), Redis db 12 of its own."""
    folder = tmp_path_factory.mktemp("declared")
    url = running_redis.rsplit("/", 1)[0] + "/12"
    redis.Redis.from_url(url).flushdb()
    config = {"redis": {"url": url}, "feast": {"project": "declared_stream"}, "stream": STREAM}
    (folder / "maquette.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    repo = folder / "feature_repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text("project: declared_stream\nprovider: local\n")
    (repo / "declared_views.py").write_text(REPO)
    settings = load_settings(folder)
    table = pa.Table.from_pylist([rating(*r, review=i) for i, r in enumerate(RATINGS)])
    settings.offline_store.mkdir(parents=True)
    pq.write_table(table, settings.offline_store / "ratings.parquet")
    apply_own_repo(settings)
    return settings


def view_rows(settings: Settings, view: str) -> list[tuple[Any, ...]]:
    return duckdb.sql(
        f"SELECT * FROM read_parquet('{settings.offline_store / view}.parquet') ORDER BY 1, 2"
    ).fetchall()


def test_int_keyed_events_declared_in_yaml_reach_feast_online_reads(
    declared_project: Settings,
) -> None:
    settings = fresh(declared_project, "online")
    publish(
        settings,
        [
            rating("09:00", 1, 7, 2.0),
            rating("09:30", "1", "7", 4.0),  # keys as text are typed by the declaration
            rating("09:40", 1, "seven", 5.0),  # not an int64: dead-lettered, not applied
        ],
    )
    result = StreamProcessor(settings).run(until_idle_s=0.2)
    assert (result.events, result.malformed) == (2, 1)
    (letter,) = operations.dead_letters(settings)
    assert letter["reason"] == "malformed: item_id 'seven' is not an integer"
    online = (
        FeatureLayer(settings)
        .store.get_online_features(
            features=[f"item_last_hour:{n}" for n in ITEM_FEATURES], entity_rows=[{"item_id": 7}]
        )
        .to_dict()
    )
    assert [online[n] for n in ITEM_FEATURES] == [[2], [3.0], [2.0], [4.0]]


def test_replayed_int_keyed_stream_equals_the_backfill_with_min_and_max(
    declared_project: Settings,
) -> None:
    settings = fresh(declared_project, "equal", batch=4)
    definition = stream_definition(settings)
    backfill(settings)
    batch = {a.view: view_rows(settings, a.view) for a in definition.aggregations}
    for agg in definition.aggregations:
        path = settings.offline_store / f"{agg.view}.parquet"
        assert pq.read_schema(path).field(agg.key).type == pa.int64()
        path.unlink()  # the stream writes its own rows: nothing of the batch's may remain
    replayed = history.replay(settings, BASE, speed=None)
    # The second processor resumes from the windows the first committed, int keys and all.
    first = StreamProcessor(settings).run(max_events=4)
    rest = StreamProcessor(settings).run(until_idle_s=0.2)
    assert (first.events, replayed.events) == (4, len(RATINGS))
    assert first.events + rest.events == len(RATINGS)
    for agg in definition.aggregations:
        assert view_rows(settings, agg.view) == batch[agg.view], agg.view
    item_101 = [row[1:] for row in batch["item_last_hour"] if row[0] == 101]
    assert item_101 == [  # (time + 1 µs, count, mean, min, max), by hand
        (at("09:00", 1), 1, 4.0, 4.0, 4.0),
        (at("09:20", 1), 2, 3.0, 2.0, 4.0),
        (at("09:50", 1), 4, 3.5, 2.0, 5.0),
        (at("10:10", 1), 4, 2.75, 1.0, 5.0),
        (at("11:30", 1), 1, 4.5, 4.5, 4.5),
    ]
    newest = {row[0]: row[2:] for row in batch["user_last_day"]}
    assert newest == {1: (10.5, 4.0), 2: (9.5, 4.5), 3: (10.5, 5.0)}


def test_stream_publish_reports_bad_lines_by_number_and_publishes_the_rest(
    declared_project: Settings, tmp_path: Path
) -> None:
    operations.reset(declared_project)
    good = '{"user_id": 1, "item_id": 9, "rating": 3.5, "rated_at": "2024-06-01T09:00:00Z"}'
    lines = [good, '{"user_id": 1, "rating": 2, "rated_at": "2024-06-01T09:01:00Z"}', "{oops", ""]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([*lines, good]) + "\n")
    project = ["--project", str(declared_project.project_dir)]
    runner = CliRunner()
    from_file = runner.invoke(app, ["stream", "publish", str(events), *project])
    assert from_file.exit_code == DataError.exit_code, from_file.output
    assert "published 2 events" in from_file.output
    assert "line 2: missing item_id" in from_file.output
    assert "line 3: not JSON" in from_file.output
    from_stdin = runner.invoke(app, ["stream", "publish", "-", *project], input=good + "\n")
    assert from_stdin.exit_code == 0, from_stdin.output
    assert operations.status(declared_project).length == 3


# ---------------------------------------------------------------- the declaration


def declared(**changes: Any) -> Settings:
    """Settings whose stream is STREAM with `changes` applied (dotted paths: None deletes)."""
    stream: dict[str, Any] = yaml.safe_load(yaml.safe_dump(STREAM, sort_keys=False))
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = stream
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return Settings(stream=StreamSettings.model_validate(stream))


def test_yaml_declaration_gives_the_windows_the_python_one_does() -> None:
    stream = {
        "events": {
            "time": "departed_at",
            "fields": {"origin": "string", "carrier": "string", "departed_at": "timestamp"}
            | {"dep_delay": "float64", "flight_id": "int64"},
            "tie_break": ["flight_id"],
        },
        "aggregations": {
            a.view: {"key": a.key, "value": a.value, "window": "1h", "features": dict(a.features)}
            for a in DEPARTURES.aggregations
        },
    }
    definition = stream_definition(Settings(stream=StreamSettings.model_validate(stream)))
    assert definition.aggregations == DEPARTURES.aggregations
    assert definition.required_fields == DEPARTURES.required_fields
    assert definition.tie_break == DEPARTURES.tie_break


@pytest.mark.parametrize(
    ("changes", "message", "remedy"),
    [
        (
            {"aggregations__item_last_hour__key": "sku"},
            "stream.aggregations.item_last_hour.key is 'sku', which stream.events.fields does not",
            "Declare it under stream.events.fields (e.g. sku: string)",
        ),
        (
            {"aggregations__item_last_hour__value": "rated_at"},
            "stream.aggregations.item_last_hour.value is 'rated_at', a timestamp field",
            "must be a float64 or int64 field",
        ),
        (
            {"aggregations__item_last_hour__window": "an hour"},
            "stream.aggregations.item_last_hour.window is 'an hour', not a window length",
            "90s, 15m, 1h or 1d",
        ),
        (
            {"aggregations__item_last_hour__features__item_ratings_60m": "median"},
            "stream.aggregations.item_last_hour.features.item_ratings_60m is 'median'",
            "count, sum, mean, min, max",
        ),
        (
            {"events__time": "when"},
            "stream.events.time is 'when', which stream.events.fields does not declare",
            "stream.events.fields",
        ),
        (
            {"definition": "maquette.examples.nycflights13.stream:DEPARTURES"},
            "both stream.definition and stream.events/stream.aggregations are set",
            "Keep one",
        ),
        ({"aggregations": {}}, "stream.aggregations is not set", "Set both"),
        ({"events": None}, "stream.events is not set", "Set both"),
    ],
)
def test_declaration_mistake_names_the_yaml_path_and_the_fix(
    changes: dict[str, Any], message: str, remedy: str
) -> None:
    with pytest.raises(ConfigError) as info:
        stream_definition(declared(**changes))
    assert message in info.value.message
    assert remedy in info.value.remedy


def test_stream_view_refuses_an_entity_typed_unlike_the_declared_key() -> None:
    from feast import Entity, ValueType

    from maquette.feast_repo import stream_view

    settings = declared()
    text_item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)
    with pytest.raises(ConfigError, match="types 'item_id' as STRING, but the stream declares"):
        stream_view(settings, "item_last_hour", entities=[text_item])
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    with pytest.raises(ConfigError, match="none of its entities \\(user\\) has that join key"):
        stream_view(settings, "item_last_hour", entities=[user])
    with pytest.raises(ConfigError, match="no aggregation named 'item_hour'") as info:
        stream_view(settings, "item_hour", entities=[user])
    assert "item_last_hour, user_last_day" in info.value.remedy


MISMATCHED_REPO = '''"""A hand-built stream view whose entity types the int64 key as a string."""

from feast import Entity, FeatureView, PushSource, ValueType

from maquette.feast_repo import project_settings, stream_view, table_source
from maquette.stream.aggregations import stream_definition

settings = project_settings(__file__)
hour = stream_definition(settings).aggregation("item_last_hour")

item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)

item_last_hour = FeatureView(
    name="item_last_hour",
    entities=[item],
    schema=hour.feast_schema(),
    source=PushSource(
        name="item_last_hour_push", batch_source=table_source(settings, "item_last_hour")
    ),
)
user_last_day = stream_view(settings, "user_last_day", entities=[user])
'''


def test_processor_refuses_a_view_whose_entity_types_the_key_otherwise(
    declared_project: Settings, tmp_path: Path
) -> None:
    config = yaml.safe_load((declared_project.project_dir / "maquette.yaml").read_text())
    config["feast"] = {"project": "declared_mismatch"}
    (tmp_path / "maquette.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp_path / "feature_repo").mkdir()
    (tmp_path / "feature_repo" / "feature_store.yaml").write_text("project: declared_mismatch\n")
    (tmp_path / "feature_repo" / "mismatched_views.py").write_text(MISMATCHED_REPO)
    settings = load_settings(tmp_path)
    apply_own_repo(settings)
    with pytest.raises(ConfigError, match="keyed by 'item_id' of type String, but the stream"):
        StreamProcessor(settings)


@pytest.mark.parametrize("text", ["7", " 7 ", "-3", "7.0", "1e3", "0x10", "٣", "", "x"])
def test_processor_and_backfill_read_an_int64_key_by_one_rule(text: str) -> None:
    # The processor keeps what the backfill keeps, so history and the stream agree.
    literal = "'" + text.replace("'", "''") + "'"
    (backfilled,) = duckdb.connect().execute(f"SELECT {int_key_sql(literal)}").fetchall()[0]
    assert backfilled == int_key(text)
