"""Rows go to the partition model named `str(value)` of their partition value, in batch (Arrow),
in the pandas path (training evaluation, reports) and in the service alike."""

from __future__ import annotations

from datetime import timedelta

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast import Entity, FeatureView, Field
from feast.infra.offline_stores.bigquery_source import BigQuerySource
from feast.types import Float64

from maquette.errors import ConfigError
from maquette.features.read_plan import view_source
from maquette.training.learners import learner_for
from maquette.training.model_types import PARENT, TrainedModel, partition_keys


def _booster(slope: float) -> lgb.Booster:
    x = np.linspace(0, 10, 200).reshape(-1, 1)
    data = lgb.Dataset(x, slope * x[:, 0], params={"verbose": -1})
    return lgb.train({"objective": "regression", "verbose": -1, "min_data_in_leaf": 5}, data, 20)


@pytest.mark.parametrize(
    ("gates", "dtype"),
    # (pandas holds an integer column with a null as floats: "1.0", so no null in that case)
    [([1, 2, 3, 1], pa.int64()), ([1.0, 2.5, None, 1.0], pa.float64())],
)
def test_a_numeric_partition_column_reaches_its_partition_model(
    gates: list[float | None], dtype: pa.DataType
) -> None:
    own = str(gates[0])  # training names the model "1" (or "1.0"), the service looks up str()
    model = TrainedModel(
        "m", "regression", "lightgbm", ["x"], {}, learner_for("lightgbm", "regression"),
        _booster(1.0), "gate", {own: _booster(-1.0)},
    )  # fmt: skip
    table = pa.table({"x": [3.0, 3.0, 3.0, 7.0], "gate": pa.array(gates, dtype)})
    arrow_scores, arrow_used = model.predict_table(table)
    with_null = table.set_column(1, "gate", pa.array([gates[0], None, None, gates[0]], dtype))
    assert model.predict_table(with_null)[1].tolist() == [own, PARENT, PARENT, own]
    pandas_scores, pandas_used = model.predict(table.to_pandas())
    assert arrow_used.tolist() == pandas_used == [own, PARENT, PARENT, own]
    assert arrow_scores.tolist() == pandas_scores.tolist()
    assert arrow_scores[0] < 0 < arrow_scores[1]  # the partition's model, not the parent's


def test_partition_keys_are_what_str_gives_and_missing_stays_missing() -> None:
    values = ["EWR", None, 1.0, True, float("nan"), pd.NA, 3, np.float64("nan")]
    assert partition_keys(values).tolist() == ["EWR", None, "1.0", "True", None, None, "3", None]


def test_a_view_not_read_from_parquet_is_refused_with_what_to_do() -> None:
    view = FeatureView(
        name="from_bigquery",
        entities=[Entity(name="user", join_keys=["user_id"])],
        schema=[Field(name="score", dtype=Float64)],
        source=BigQuerySource(table="project.dataset.table", timestamp_field="ts"),
        ttl=timedelta(days=1),
    )
    with pytest.raises(ConfigError, match="reads a BigQuerySource"):
        view_source(view, ["score"])
