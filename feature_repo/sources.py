"""Sources: Parquet tables from `maquette data load`, push sources fed by the speed layer, request data."""

from feast import Field, RequestSource
from feast.types import UnixTimestamp

from maquette.feast_repo import project_settings, table_source

# Paths come from the project's settings, so the offline store can move without editing here.
settings = project_settings(__file__)

weather_hourly_source = table_source(settings, "weather_hourly")
plane_source = table_source(settings, "plane")
carrier_daily_source = table_source(settings, "carrier_daily")
route_daily_source = table_source(settings, "route_daily")
origin_daily_source = table_source(settings, "origin_daily")

# Known only when a prediction is requested: the flight's scheduled departure (UTC).
flight_request = RequestSource(
    name="flight_request",
    schema=[Field(name="scheduled_departure", dtype=UnixTimestamp)],
)
