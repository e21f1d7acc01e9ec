"""Batch sources: Parquet tables written by `maquette data load`, and request-time data."""

from pathlib import Path

from feast import Field, FileSource, RequestSource
from feast.types import UnixTimestamp

from maquette.config import load_settings
from maquette.datasets import feature_table_path

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

# Known only when a prediction is requested: the flight's scheduled departure (UTC).
flight_request = RequestSource(
    name="flight_request",
    schema=[Field(name="scheduled_departure", dtype=UnixTimestamp)],
)
