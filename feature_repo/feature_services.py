"""Feature services: the named feature sets models are trained and served with."""

from feast import FeatureService
from feature_views import (
    carrier_daily,
    carrier_last_hour,
    departure_calendar,
    origin_daily,
    origin_last_hour,
    plane,
    route_daily,
    weather_hourly,
)

# Everything known about a flight before it departs, including the last hour's departures.
flight_delay = FeatureService(
    name="flight_delay",
    features=[
        weather_hourly,
        plane,
        carrier_daily,
        route_daily,
        origin_daily,
        origin_last_hour,
        carrier_last_hour,
        departure_calendar,
    ],
    description="Features for the flight_delay and late_arrival models.",
)
