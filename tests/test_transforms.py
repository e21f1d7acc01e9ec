from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from maquette.features import transforms

NY = "America/New_York"


def test_small_and_vectorized_paths_agree_across_dst_changes() -> None:
    times = [datetime(2013, 1, 1, tzinfo=UTC) + timedelta(minutes=37 * i) for i in range(15_000)]
    vectorized = (
        transforms.local_hour(times, NY),
        transforms.day_of_week(times, NY),
        transforms.days_to_nearest_us_holiday(times, NY),
    )
    small: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i in range(0, len(times), 100):
        chunk = times[i : i + 100]
        small[0].extend(transforms.local_hour(chunk, NY))
        small[1].extend(transforms.day_of_week(chunk, NY))
        small[2].extend(transforms.days_to_nearest_us_holiday(chunk, NY))
    assert vectorized == small


@pytest.mark.parametrize("zone", [NY, "Australia/Adelaide", "Asia/Kathmandu", "Europe/London"])
@pytest.mark.parametrize("size", [7, 100, 5000])
def test_each_path_gives_pandas_local_times_across_dst_changes(zone: str, size: int) -> None:
    # Adelaide (+9:30/+10:30) changes its clocks at a half hour of UTC, Kathmandu is +5:45:
    # the offset memo per quarter hour must hold there too. 7 rows take the plain-Python path,
    # 100 the memo path, 5,000 pandas; all must equal pandas' own conversion.
    times = [datetime(2013, 3, 20, tzinfo=UTC) + timedelta(minutes=13 * i) for i in range(30_000)]
    expected = pd.DatetimeIndex(times).tz_convert(zone)
    hours, weekdays = expected.hour.tolist(), expected.dayofweek.tolist()
    got_hours: list[int] = []
    got_weekdays: list[int] = []
    for i in range(0, len(times), size):
        got_hours += transforms.local_hour(times[i : i + size], zone)
        got_weekdays += transforms.day_of_week(times[i : i + size], zone)
    assert got_hours == hours and got_weekdays == weekdays


def test_calendar_values_are_local() -> None:
    # 2013-07-04 15:00 UTC is 11:00 in New York on Independence Day, a Thursday.
    when = [datetime(2013, 7, 4, 15, tzinfo=UTC), datetime(2013, 7, 6, 3, tzinfo=UTC)]
    assert transforms.local_hour(when, NY) == [11, 23]
    assert transforms.day_of_week(when, NY) == [3, 4]
    assert transforms.days_to_nearest_us_holiday(when, NY) == [0, 1]


def test_nearest_holiday_may_lie_in_the_next_year() -> None:
    assert transforms.days_to_nearest_us_holiday([datetime(2013, 12, 30, 17, tzinfo=UTC)], NY) == [
        2
    ]


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        transforms.local_hour([datetime(2013, 1, 1)], NY)
    with pytest.raises(ValueError, match="timezone-aware"):
        transforms.local_hour([datetime(2013, 1, 1)] * 40, NY)
