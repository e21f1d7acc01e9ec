"""Feature services: the named feature sets models are trained and served with."""

from feast import FeatureService
from feature_views import (
    carrier_daily,
    departure_calendar,
    origin_daily,
    plane,
    route_daily,
    weather_hourly,
)

# Everything known about a flight before it departs.
flight_delay = FeatureService(
    name="flight_delay",
    features=[weather_hourly, plane, carrier_daily, route_daily, origin_daily, departure_calendar],
    description="Features for the flight_delay and late_arrival models.",
)
