"""Feature views over batch tables and streamed aggregates, each with a deliberate TTL; one on-demand view."""

from datetime import timedelta
from typing import Any

from entities import carrier, origin, route, tailnum
from feast import FeatureView, Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String
from sources import (
    carrier_daily_source,
    flight_request,
    origin_daily_source,
    plane_source,
    route_daily_source,
    settings,
    weather_hourly_source,
)

from maquette.feast_repo import stream_view

# Observations are hourly; older than 3 hours means the station went quiet, not "still true".
weather_hourly = FeatureView(
    name="weather_hourly",
    entities=[origin],
    ttl=timedelta(hours=3),
    schema=[
        Field(name=n, dtype=Float64)
        for n in (
            "temp",
            "dewp",
            "humid",
            "wind_dir",
            "wind_speed",
            "wind_gust",
            "precip",
            "pressure",
            "visib",
        )
    ],
    source=weather_hourly_source,
)

# Aircraft facts do not expire (a zero TTL means no limit in Feast).
plane = FeatureView(
    name="plane",
    entities=[tailnum],
    ttl=timedelta(0),
    schema=[
        Field(name="year_built", dtype=Int64),
        Field(name="seats", dtype=Int64),
        Field(name="engines", dtype=Int64),
        Field(name="plane_manufacturer", dtype=String),
        Field(name="plane_type", dtype=String),
    ],
    source=plane_source,
)

# Daily rows are stamped at local midnight; two days allows one missed daily run.
carrier_daily = FeatureView(
    name="carrier_daily",
    entities=[carrier],
    ttl=timedelta(days=2),
    schema=[
        Field(name="carrier_dep_delay_7d", dtype=Float64),
        Field(name="carrier_arr_delay_7d", dtype=Float64),
        Field(name="carrier_cancel_rate_7d", dtype=Float64),
        Field(name="carrier_flights_7d", dtype=Int64),
    ],
    source=carrier_daily_source,
)

route_daily = FeatureView(
    name="route_daily",
    entities=[route],
    ttl=timedelta(days=2),
    schema=[
        Field(name="route_arr_delay_28d", dtype=Float64),
        Field(name="route_flights_28d", dtype=Int64),
    ],
    source=route_daily_source,
)

origin_daily = FeatureView(
    name="origin_daily",
    entities=[origin],
    ttl=timedelta(days=2),
    schema=[
        Field(name="origin_dep_delay_7d", dtype=Float64),
        Field(name="origin_flights_7d", dtype=Int64),
    ],
    source=origin_daily_source,
)

# Streaming: departures in the last hour, pushed by the speed layer within a second of the
# event and backfilled for history, both from the one definition in the example's `stream`
# module (maquette.yaml's stream.definition): schema, push source and offline table come from
# it. A row holds the window ending at its departure; a window later it no longer describes
# "now" (the TTL, one window by default).
origin_last_hour = stream_view(settings, "origin_last_hour", entities=[origin])
carrier_last_hour = stream_view(settings, "carrier_last_hour", entities=[carrier])


@on_demand_feature_view(
    sources=[flight_request],
    schema=[
        Field(name="dep_hour_local", dtype=Int64),
        Field(name="dep_day_of_week", dtype=Int64),
        Field(name="days_to_holiday", dtype=Int64),
    ],
    mode="python",
)
def departure_calendar(inputs: dict[str, Any]) -> dict[str, Any]:
    """Calendar features of the scheduled departure, computed at request time."""
    # Feast re-executes this function from its source text, so it imports what it uses here.
    # New York local time, because delays follow the local day (rush hours, holidays).
    from maquette.features import transforms

    when = inputs["scheduled_departure"]
    return {
        "dep_hour_local": transforms.local_hour(when, "America/New_York"),
        "dep_day_of_week": transforms.day_of_week(when, "America/New_York"),
        "days_to_holiday": transforms.days_to_nearest_us_holiday(when, "America/New_York"),
    }
