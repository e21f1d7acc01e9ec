"""The demo's stream: departure events and the last hour of departures per airport and airline.

`maquette.yaml` names `DEPARTURES` in `stream.definition`; `feature_repo/` declares the two
streamed feature views with `maquette.feast_repo.stream_view`, so the processor, the backfill and
Feast share one definition. It is the Python form of a stream declaration; a project can write
the same in maquette.yaml (`stream.events` and `stream.aggregations`, README "Speed layer").
"""

from datetime import timedelta

from maquette.stream.aggregations import StreamDefinition, WindowAggregation

# How delayed departures from an airport have been in the last hour: congestion right now.
ORIGIN_LAST_HOUR = WindowAggregation(
    view="origin_last_hour",
    push_source="origin_last_hour_push",
    key="origin",
    value="dep_delay",
    window=timedelta(hours=1),
    features=(("origin_dep_delay_60m", "mean"), ("origin_departures_60m", "count")),
)

# The same per airline: a carrier's knock-on delays spread across its network within the hour.
CARRIER_LAST_HOUR = WindowAggregation(
    view="carrier_last_hour",
    push_source="carrier_last_hour_push",
    key="carrier",
    value="dep_delay",
    window=timedelta(hours=1),
    features=(("carrier_dep_delay_60m", "mean"), ("carrier_departures_60m", "count")),
)

# One event per departure, as the flights table holds it; flight_id orders departures that
# share a minute, so every replay publishes them in the same order.
DEPARTURES = StreamDefinition(
    event_time="departed_at",
    fields={
        "origin": "departure airport, e.g. JFK (required)",
        "carrier": "airline code, e.g. UA (required)",
        "departed_at": "actual departure, ISO 8601 with a zone: the event time (required)",
        "dep_delay": "departure delay in minutes, a number (required)",
        "flight_id": "the flight's id",
        "dest": "destination airport",
        "tailnum": "aircraft tail number",
        "scheduled_departure": "scheduled departure, ISO 8601 with a zone",
    },
    aggregations=(ORIGIN_LAST_HOUR, CARRIER_LAST_HOUR),
    tie_break=("flight_id",),
)
