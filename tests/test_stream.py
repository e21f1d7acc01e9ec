"""The speed layer on a real Redis and real Feast: window math, lateness, restarts, backfill."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
import redis
from typer.testing import CliRunner

from maquette.cli import app
from maquette.config import Settings, load_settings
from maquette.errors import ConfigError, DataNotLoaded
from maquette.examples.nycflights13.stream import CARRIER_LAST_HOUR, DEPARTURES, ORIGIN_LAST_HOUR
from maquette.features.layer import FeatureLayer
from maquette.features.online import PRESENT
from maquette.stream import history, operations
from maquette.stream.aggregations import StreamDefinition, WindowAggregation, stream_definition
from maquette.stream.events import publish
from maquette.stream.processor import RunResult, StreamProcessor
from tests.conftest import make_project, moved_to_cluster

DAY = datetime(2013, 12, 1, tzinfo=UTC)
ORIGIN_FEATURES = [f"origin_last_hour:{n}" for n in ORIGIN_LAST_HOUR.feature_names]


# A stream project without history: no backfill, no warm start.
STREAM_SETTINGS = {"events_source": None, "backfill_before": None, "allowed_lateness_s": 3600}


@pytest.fixture(scope="module")
def stream_project(tmp_path_factory: pytest.TempPathFactory, running_redis: str) -> Settings:
    """A Feast project with the stream views applied, no history (no backfill, no warm start)."""
    folder = make_project(
        tmp_path_factory.mktemp("stream"),
        running_redis,
        feast={"project": "stream_tests"},
        stream=STREAM_SETTINGS,
    )
    settings = load_settings(folder)
    apply_own_repo(settings)
    return settings


@pytest.fixture(
    scope="module", params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)]
)
def stream_store(
    request: pytest.FixtureRequest,
    stream_project: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """The stream project on one Redis, then a twin with everything on the Redis Cluster
    (stream, consumer group, state, dead letters, online rows; offline files of its own)."""
    if request.param == "redis":
        return stream_project
    cluster = request.getfixturevalue("redis_cluster")
    folder = make_project(
        tmp_path_factory.mktemp("stream-cluster"),
        None,
        redis={"cluster": cluster.nodes, "password": cluster.password},
        feast={"project": "stream_tests"},
        stream=STREAM_SETTINGS,
    )
    settings = load_settings(folder)
    apply_own_repo(settings)
    return settings


def apply_own_repo(settings: Settings) -> None:
    """`feast apply` of this project's own feature_repo/.

    Feast imports repo modules by bare name (`sources`), so without this a repo applied
    earlier in the process (`loaded_project`'s) would answer, with its Parquet paths.
    """
    repo, names = str(settings.feature_repo), [p.stem for p in settings.feature_repo.glob("*.py")]
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, repo)
    try:
        FeatureLayer(settings).apply()
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
        sys.path.remove(repo)


def fresh(settings: Settings, name: str, **stream_settings: Any) -> Settings:
    """The settings with a stream of their own (and its group, state, dead letters) reset."""
    copy = settings.model_copy(deep=True)
    # On a cluster the stream's keys share a hash tag, as the settings give them.
    stream = f"{{test:{name}}}" if settings.redis.cluster else f"test:{name}"
    copy.stream.stream, copy.stream.dead_letter = stream, f"{stream}:dead"
    for key, value in stream_settings.items():
        setattr(copy.stream, key, value)
    operations.reset(copy)
    return copy


def departure(at: str, delay: float, origin: str, carrier: str) -> dict[str, Any]:
    """A departure event at HH:MM on DAY."""
    hour, minute = (int(p) for p in at.split(":"))
    when = DAY + timedelta(hours=hour, minutes=minute)
    return {"origin": origin, "carrier": carrier, "departed_at": when, "dep_delay": delay}


def process(settings: Settings) -> RunResult:
    return StreamProcessor(settings).run(until_idle_s=0.2)


def offline_rows(settings: Settings, agg: WindowAggregation, key: str) -> list[tuple]:
    """The view's offline rows for one key: (event_timestamp, features...)."""
    path = settings.offline_store / f"{agg.view}.parquet"
    cols = ", ".join(f'"{n}"' for n in agg.feature_names)
    return duckdb.execute(
        f'SELECT event_timestamp, {cols} FROM read_parquet(?) WHERE "{agg.key}" = ? '
        "ORDER BY event_timestamp",
        [str(path), key],
    ).fetchall()


def backfilled_rows(
    agg: WindowAggregation, events: Sequence[dict[str, Any]], key: str
) -> list[tuple]:
    """The same rows computed by the batch side (the backfill SQL) over the same events."""
    table = pa.Table.from_pylist(
        [{k: e[k] for k in ("origin", "carrier", "departed_at", "dep_delay")} for e in events]
    )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events", table)
    cols = ", ".join(f'"{n}"' for n in agg.feature_names)
    return con.execute(
        f"SELECT event_timestamp, {cols} FROM ({agg.backfill_sql('SELECT * FROM events', DEPARTURES.event_time)}) "
        f'WHERE "{agg.key}" = ? ORDER BY event_timestamp',
        [key],
    ).fetchall()


def at(hhmm: str, micros: int = 1) -> datetime:
    hour, minute = (int(p) for p in hhmm.split(":"))
    return DAY + timedelta(hours=hour, minutes=minute, microseconds=micros)


# ---------------------------------------------------------------- window math


HAND_CHECKED = [
    departure("10:00", 10, "HC1", "C1"),
    departure("10:30", 20, "HC1", "C1"),
    departure("11:00", 30, "HC1", "C1"),
    departure("11:00", 0, "HC1", "C1"),  # same minute: one row holding both
    departure("11:01", 60, "HC1", "C1"),  # 10:00 has left the window (t - 60 min < time <= t)
    departure("12:30", 5, "HC1", "C1"),
]


@pytest.fixture(scope="module")
def hand_checked(stream_project: Settings) -> Settings:
    settings = fresh(stream_project, "hand")
    publish(settings, HAND_CHECKED)
    process(settings)
    return settings


def test_window_rows_match_a_hand_checked_stream(hand_checked: Settings) -> None:
    expected = [
        (at("10:00"), 10.0, 1),
        (at("10:30"), 15.0, 2),
        (at("11:00"), 50 / 3, 3),
        (at("11:01"), 27.5, 4),
        (at("12:30"), 5.0, 1),
    ]
    assert offline_rows(hand_checked, ORIGIN_LAST_HOUR, "HC1") == expected
    assert offline_rows(hand_checked, CARRIER_LAST_HOUR, "C1") == expected
    assert offline_rows(hand_checked, ORIGIN_LAST_HOUR, "HC1") == backfilled_rows(
        ORIGIN_LAST_HOUR, HAND_CHECKED, "HC1"
    )


@pytest.fixture(
    scope="module", params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)]
)
def online_hand_checked(request: pytest.FixtureRequest, hand_checked: Settings) -> Settings:
    """The hand-checked stream processed on one Redis, then on the cluster (the stream, its
    state, its dead letters and the online rows)."""
    if request.param == "redis":
        return hand_checked
    settings = moved_to_cluster(
        fresh(hand_checked, "hand-cluster"), request.getfixturevalue("redis_cluster")
    )
    assert settings.stream.stream == "{test:hand-cluster}"
    operations.reset(settings)
    publish(settings, HAND_CHECKED)
    process(settings)
    return settings


def test_online_value_is_the_newest_window_and_feast_reads_it(
    online_hand_checked: Settings,
) -> None:
    hand_checked = online_hand_checked
    layer = FeatureLayer(hand_checked)
    ours = layer.online_features([{"origin": "HC1"}], ORIGIN_FEATURES, as_of=at("12:31"))
    assert ours.values[0] == {"origin_dep_delay_60m": 5.0, "origin_departures_60m": 1}
    assert set(ours.statuses[0].values()) == {PRESENT}
    feast = layer.store.get_online_features(
        features=ORIGIN_FEATURES, entity_rows=[{"origin": "HC1"}]
    ).to_dict()
    assert feast["origin_dep_delay_60m"] == [5.0] and feast["origin_departures_60m"] == [1]
    # A window after its newest departure, the value is stale (the view's TTL is the window).
    later = layer.online_features([{"origin": "HC1"}], ORIGIN_FEATURES, as_of=at("13:31"))
    assert later.stale(0) == ORIGIN_LAST_HOUR.feature_names


def test_training_frame_sees_only_departures_strictly_before_the_prediction(
    hand_checked: Settings,
) -> None:
    times = [at("11:00", 0), at("11:00", 1), at("13:30", 1), at("13:30", 2), at("09:59", 0)]
    entities = pd.DataFrame({"origin": ["HC1"] * len(times), "event_timestamp": times})
    frame = FeatureLayer(hand_checked).training_frame(entities, ORIGIN_FEATURES).to_pandas()
    counts = frame["origin_departures_60m"].astype("Int64").tolist()
    # At exactly 11:00 the 11:00 departures have not happened yet; a microsecond later they
    # have; at 13:30:00.000001 the 12:30 row is one window old (TTL), then it is gone.
    assert counts == [2, 3, 1, pd.NA, pd.NA]


def test_stock_feast_push_writes_the_same_online_bytes(stream_project: Settings) -> None:
    events = [departure(f"10:{m:02d}", m * 3 - 20, "SP1", "S1") for m in range(0, 50, 7)]
    client = redis.Redis.from_url(str(stream_project.redis.url))
    keys = [
        _entity_key(stream_project, "origin", "SP1"),
        _entity_key(stream_project, "carrier", "S1"),
    ]
    dumps = []
    for feast_push in (True, False):
        client.delete(*keys)
        settings = fresh(stream_project, f"stock-{feast_push}")
        publish(settings, events)
        StreamProcessor(settings, feast_push=feast_push).run(until_idle_s=0.2)
        dumps.append([client.hgetall(k) for k in keys])
    assert dumps[0] == dumps[1]
    assert all(len(d) == 3 for d in dumps[1])  # two features and the timestamp per view


def _entity_key(settings: Settings, name: str, value: str) -> bytes:
    from feast.types import String

    from maquette.features.redis_layout import entity_key_bytes

    return entity_key_bytes({name: value}, {name: String}, settings.feast.project)


def test_stock_feast_offline_push_appends_to_the_file_the_processor_writes(
    hand_checked: Settings,
) -> None:
    from feast.data_source import PushMode

    layer = FeatureLayer(hand_checked)
    row = pd.DataFrame(
        {
            "origin": ["HC2"],
            "event_timestamp": [pd.Timestamp(at("15:00"))],
            "origin_dep_delay_60m": [7.0],
            "origin_departures_60m": [1],
        }
    )
    layer.store.push(ORIGIN_LAST_HOUR.push_source, row, to=PushMode.OFFLINE)
    assert offline_rows(hand_checked, ORIGIN_LAST_HOUR, "HC2") == [(at("15:00"), 7.0, 1)]
    assert len(offline_rows(hand_checked, ORIGIN_LAST_HOUR, "HC1")) == 5


# ---------------------------------------------------------------- event time, bad events


def test_late_event_within_allowed_lateness_corrects_its_windows(stream_store: Settings) -> None:
    settings = fresh(stream_store, "late-ok")
    first = [departure(t, d, "LT1", "L1") for t, d in (("10:00", 10), ("10:40", 20), ("11:05", 30))]
    publish(settings, first)
    process(settings)
    late = departure("10:20", 40, "LT1", "L1")  # 45 minutes behind, lateness is an hour
    publish(settings, [late])
    result = process(settings)
    assert result.events == 1 and result.late == 0
    assert offline_rows(settings, ORIGIN_LAST_HOUR, "LT1") == [
        (at("10:00"), 10.0, 1),
        (at("10:20"), 25.0, 2),
        (at("10:40"), 70 / 3, 3),  # the late event entered this window...
        (at("11:05"), 30.0, 3),  # ...and this one, whose row and online value were corrected
    ]
    assert offline_rows(settings, ORIGIN_LAST_HOUR, "LT1") == backfilled_rows(
        ORIGIN_LAST_HOUR, [*first, late], "LT1"
    )
    online = FeatureLayer(settings).online_features([{"origin": "LT1"}], ORIGIN_FEATURES)
    assert online.values[0] == {"origin_dep_delay_60m": 30.0, "origin_departures_60m": 3}


def test_event_later_than_allowed_lateness_is_counted_and_dead_lettered(
    stream_store: Settings,
) -> None:
    settings = fresh(stream_store, "late-out", allowed_lateness_s=600)
    publish(settings, [departure("12:00", 10, "LT2", "L2")])
    publish(settings, [departure("11:45", 99, "LT2", "L2")])  # 15 min behind, 10 allowed
    result = process(settings)
    assert (result.events, result.late) == (1, 1)
    assert offline_rows(settings, ORIGIN_LAST_HOUR, "LT2") == [(at("12:00"), 10.0, 1)]
    status = operations.status(settings)
    assert (status.events, status.late, status.dead_letters, status.pending) == (1, 1, 1, 0)
    (letter,) = operations.dead_letters(settings)
    assert letter["reason"].startswith("late: departed_at 2013-12-01T11:45:00+00:00 is more than")
    assert letter["dep_delay"] == "99" and letter["origin"] == "LT2"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"origin": "MF1", "departed_at": "2013-12-01T10:00:00Z"}, "missing carrier, dep_delay"),
        ({"departed_at": "yesterday"}, "departed_at 'yesterday' is not an ISO 8601 time"),
        ({"departed_at": "2013-12-01T10:00:00"}, "has no time zone"),
        ({"dep_delay": "soon"}, "dep_delay 'soon' is not a number"),
        ({"dep_delay": "nan"}, "dep_delay is nan"),
        ({"carrier": ""}, "missing carrier"),
    ],
)
def test_malformed_event_goes_to_the_dead_letter_stream_with_its_reason(
    stream_store: Settings, event: dict[str, str], reason: str
) -> None:
    settings = fresh(stream_store, "malformed")
    good = {"origin": "MF1", "carrier": "M1", "departed_at": "2013-12-01T10:00:00Z", "dep_delay": 5}
    bad = event if "origin" in event else {**good, **event}
    publish(settings, [bad, good])
    result = process(settings)
    assert (result.events, result.malformed) == (1, 1)
    (letter,) = operations.dead_letters(settings)
    assert reason in letter["reason"] and letter["reason"].startswith("malformed: ")
    assert operations.status(settings).malformed == 1


# ---------------------------------------------------------------- restarts


def test_restart_after_an_unacknowledged_batch_counts_nothing_twice(
    stream_store: Settings,
) -> None:
    settings = fresh(stream_store, "restart", batch=7, commit_interval_s=3600)
    events = [
        departure(f"{8 + i // 12}:{(i * 5) % 60:02d}", i % 13, "RS1", "R1") for i in range(40)
    ]
    publish(settings, events)
    crashed = StreamProcessor(settings)
    crashed.poll()
    crashed.commit()  # 7 entries acknowledged
    crashed.poll()
    crashed.poll()  # 14 more applied and pushed online, never acknowledged: then it "dies"
    del crashed
    result = process(settings)
    assert result.redelivered == 14 and result.events == 33
    status = operations.status(settings)
    assert (status.events, status.pending, status.undelivered) == (40, 0, 0)
    for agg, key in ((ORIGIN_LAST_HOUR, "RS1"), (CARRIER_LAST_HOUR, "R1")):
        assert offline_rows(settings, agg, key) == backfilled_rows(agg, events, key)
    online = FeatureLayer(settings).online_features([{"origin": "RS1"}], ORIGIN_FEATURES)
    newest = backfilled_rows(ORIGIN_LAST_HOUR, events, "RS1")[-1]
    assert tuple(online.values[0].values()) == newest[1:]


# ---------------------------------------------------------------- on the real data


def test_streamed_december_equals_the_backfill_over_the_same_events(
    loaded_project: Settings,
) -> None:
    # The batch layer covers events before 2013-12-01; the stream takes over from there,
    # starting with the last hour of history, so the seam is exact too.
    settings = fresh(loaded_project, "december")
    end = DAY + timedelta(hours=14)
    replayed = history.replay(settings, DAY, end, speed=None)
    result = process(settings)
    assert replayed.events > 300 and result.events == replayed.events
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    compared = 0
    for agg in DEPARTURES.aggregations:
        con.sql(
            agg.backfill_sql(history.events_sql(settings, end=end), DEPARTURES.event_time)
        ).create_view("batch")
        path = settings.offline_store / f"{agg.view}.parquet"
        window = f"event_timestamp > '{DAY.isoformat()}' AND event_timestamp < '{end.isoformat()}'"
        streamed = con.sql(f"SELECT * FROM read_parquet('{path}') WHERE {window} ORDER BY 1, 2")
        backfilled = con.sql(f"SELECT * FROM batch WHERE {window} ORDER BY 1, 2").fetchall()
        assert streamed.fetchall() == backfilled
        compared += len(backfilled)
    assert compared > 500


def test_the_flight_delay_service_trains_on_the_streaming_features(trained: Any) -> None:
    record = trained["flight_delay"].record
    names = {f.name: f.view for f in record.features}
    for agg in DEPARTURES.aggregations:
        assert all(names[n] == agg.view for n in agg.feature_names)
    assert record.importance["origin_dep_delay_60m"] > 0


def test_a_pushed_departure_reaches_a_served_prediction(
    loaded_project: Settings, production: dict[str, str]
) -> None:
    from maquette.serving.predictor import Predictor

    settings = fresh(loaded_project, "served")
    when = datetime(2014, 1, 2, 12, tzinfo=UTC)  # after all of 2013: the newest rows in Redis
    row = {
        "origin": "JFK",
        "carrier": "UA",
        "tailnum": "N14228",
        "route": "JFK-LAX",
        "scheduled_departure": when,
    }
    predictor = Predictor(settings, log=False)
    answers = []
    for minute, delay in ((10, -2.0), (40, 240.0)):
        event = {"origin": "JFK", "carrier": "UA", "dep_delay": delay}
        publish(settings, [{**event, "departed_at": when - timedelta(minutes=60 - minute)}])
        process(settings)
        (answer,) = predictor.predict([row], "flight_delay@production", as_of=when)
        streamed = {n for agg in DEPARTURES.aggregations for n in agg.feature_names}
        assert not streamed & {*answer.missing_features, *answer.stale_features}
        answers.append(answer.prediction)
    online = predictor.layer.online_features([row], as_of=when)
    assert online.values[0]["origin_dep_delay_60m"] == 119.0  # (-2 + 240) / 2
    assert online.values[0]["origin_departures_60m"] == 2
    assert answers[1] > answers[0]


# ---------------------------------------------------------------- the commands


def test_stream_commands_replay_run_status_backfill_reset(
    loaded_project: Settings, tmp_path: Path
) -> None:
    runner = CliRunner()
    project = ["--project", str(loaded_project.project_dir)]
    speed = ["--speed", "max"]
    settings = loaded_project
    operations.reset(settings)
    replay = runner.invoke(
        app,
        ["stream", "replay", "--from", "2013-12-03", "--to", "2013-12-03T13:00", *speed, *project],
    )
    assert replay.exit_code == 0, replay.output
    assert "published" in replay.output
    run = runner.invoke(app, ["stream", "run", "--until-idle", "0.3", *project])
    assert run.exit_code == 0, run.output
    assert "events applied" in run.output
    status = runner.invoke(app, ["stream", "status", *project])
    assert status.exit_code == 0 and "watermark" in status.output
    assert operations.status(settings).events > 0
    backfill = runner.invoke(app, ["stream", "backfill", *project])
    assert backfill.exit_code == 0 and "offline store" in backfill.output
    # The backfill rewrote history before 2013-12-01 and kept what the stream wrote after it.
    assert offline_rows(settings, ORIGIN_LAST_HOUR, "JFK")[-1][0] > datetime(
        2013, 12, 3, tzinfo=UTC
    )
    reset = runner.invoke(app, ["stream", "reset", *project])
    assert reset.exit_code == 0 and operations.status(settings).length == 0


def test_processor_without_the_stream_views_says_to_apply(
    tmp_path: Path, running_redis: str
) -> None:
    settings = load_settings(make_project(tmp_path, running_redis, feast={"project": "empty"}))
    settings.feast.registry = tmp_path / "registry.db"
    FeatureLayer(settings).store.apply([])
    with pytest.raises(DataNotLoaded, match="no feature view is fed by the push source"):
        StreamProcessor(settings)


def test_status_of_a_missing_stream_is_empty(stream_project: Settings) -> None:
    settings = fresh(stream_project, "never-used")
    status = operations.status(settings)
    assert (status.length, status.events, status.pending, status.watermark) == (0, 0, 0, None)


# ---------------------------------------------------------------- the definition


def test_stream_definition_is_loaded_from_the_setting(stream_project: Settings) -> None:
    assert stream_definition(stream_project) is DEPARTURES
    assert DEPARTURES.required_fields == ("origin", "carrier", "departed_at", "dep_delay")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (None, "stream.definition is not set"),
        ("no_such_module_anywhere:EVENTS", "cannot be loaded"),
        ("maquette.examples.nycflights13.stream:NOPE", "cannot be loaded"),
        ("maquette.examples.nycflights13.stream:ORIGIN_LAST_HOUR", "not a StreamDefinition"),
    ],
)
def test_stream_definition_that_cannot_be_used_says_how_to_fix_it(
    stream_project: Settings, reference: str | None, message: str
) -> None:
    settings = stream_project.model_copy(deep=True)
    settings.stream.definition = reference
    with pytest.raises(ConfigError, match=message) as info:
        stream_definition(settings)
    assert "stream.definition" in info.value.remedy


def test_stream_definition_refuses_fields_it_does_not_declare() -> None:
    with pytest.raises(ConfigError, match=r"does not declare: \['dep_delay'\]"):
        StreamDefinition(
            event_time="departed_at",
            fields={"origin": "airport", "carrier": "airline", "departed_at": "time"},
            aggregations=(ORIGIN_LAST_HOUR,),
        )
