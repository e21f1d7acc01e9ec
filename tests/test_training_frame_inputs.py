"""Python-mode on-demand views get their inputs from Maquette's own conversion, which must equal
pyarrow's `to_pydict` (values and tzinfo) and give Feast's own `transform_arrow` results."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Int64, UnixTimestamp

from maquette.features import training_frame

START = datetime(2013, 3, 9, 22, 59, 59, 999_999, tzinfo=UTC)
TIMES = [START + timedelta(minutes=17 * i, microseconds=i) for i in range(2_000)] + [None]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "+05:30", None])
def test_python_columns_equal_pyarrow_to_pydict(unit: str, tz: str | None) -> None:
    times = [t if t is None or tz else t.replace(tzinfo=None) for t in TIMES]
    table = pa.table(
        {
            "at": pa.array(times, pa.timestamp("us", tz=tz)).cast(
                pa.timestamp(unit, tz=tz), safe=False
            ),
            "origin": ["JFK", None] * 1000 + ["EWR"],
            "delay": [*range(2_000), None],
        }
    )
    table = pa.concat_tables([table.slice(0, 700), table.slice(700)])  # several chunks
    ours, theirs = training_frame.python_columns(table), table.to_pydict()
    assert ours == theirs
    assert [type(v) for v in ours["at"]] == [type(v) for v in theirs["at"]]
    assert [v.tzinfo for v in ours["at"] if v is not None] == [
        v.tzinfo for v in theirs["at"] if v is not None
    ]


def test_a_python_mode_view_computes_what_feast_computes() -> None:
    request = RequestSource(name="when", schema=[Field(name="at", dtype=UnixTimestamp)])

    @on_demand_feature_view(  # type: ignore[misc]
        sources=[request],
        schema=[Field(name="hour", dtype=Int64), Field(name="zone", dtype=Int64)],
        mode="python",
    )
    def calendar(inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            "hour": [None if t is None else t.hour for t in inputs["at"]],
            # Fails unless each time carries pyarrow's own tzinfo (a ZoneInfo named UTC).
            "zone": [None if t is None else len(str(t.tzinfo.key)) for t in inputs["at"]],
        }

    table = pa.table({"at": pa.array(TIMES, pa.timestamp("us", tz="UTC"))})
    ours = training_frame._transform(calendar, table)
    assert ours.to_pydict() == calendar.transform_arrow(table).to_pydict()
    assert ours.column("hour").null_count == 1
