"""Sources: Parquet tables from `maquette data load`, push sources fed by the speed layer, request data."""

from pathlib import Path

from feast import Field, FileSource, PushSource, RequestSource
from feast.types import UnixTimestamp

from maquette.config import load_settings
from maquette.data.sources import feature_table_path
from maquette.examples.nycflights13.stream import CARRIER_LAST_HOUR, ORIGIN_LAST_HOUR

# Paths come from the project's settings, so the offline store can move without editing here.
_settings = load_settings(Path(__file__).resolve().parent.parent)


def _table(name: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=str(feature_table_path(_settings, name)),
        timestamp_field="event_timestamp",
    )


weather_hourly_source = _table("weather_hourly")
plane_source = _table("plane")
carrier_daily_source = _table("carrier_daily")
route_daily_source = _table("route_daily")
origin_daily_source = _table("origin_daily")

# The speed layer pushes its windowed aggregates here (the stream processor); the batch source holds
# the DuckDB backfill plus every pushed row, so training sees the same history serving saw.
origin_last_hour_push = PushSource(
    name=ORIGIN_LAST_HOUR.push_source, batch_source=_table(ORIGIN_LAST_HOUR.view)
)
carrier_last_hour_push = PushSource(
    name=CARRIER_LAST_HOUR.push_source, batch_source=_table(CARRIER_LAST_HOUR.view)
)

# Known only when a prediction is requested: the flight's scheduled departure (UTC).
flight_request = RequestSource(
    name="flight_request",
    schema=[Field(name="scheduled_departure", dtype=UnixTimestamp)],
)
