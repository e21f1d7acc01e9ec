"""What the benchmarks take from the project's dataset: entity rows, request columns, and the
few facts no setting holds (a `BenchDataset`, found next to `dataset.module`).

A dataset package declares `BENCH = BenchDataset(...)` in a module named `bench` beside the
module `dataset.module` names: for `mydata.tables`, that is `mydata.bench` (the demo's is in
`maquette/examples/`). Without one, the benchmarks use the defaults below (entity rows from
the first, no hand-written floor for training frames).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maquette.config import Settings
from maquette.errors import ConfigError
from maquette.features.layer import FeatureLayer
from maquette.platform.demo import entity_frame

# (offline store folder, entities Parquet file) -> DuckDB SQL of the hand-written join.
FloorSql = Callable[[Path, Path], str]


@dataclass(frozen=True)
class BenchDataset:
    """The facts about a dataset that the benchmarks cannot read from the settings."""

    online_rows_from: int = 0
    """First row of the entity source whose keys the online-read cases look up."""
    serving_rows_from: int = 0
    """First row of the entity source whose keys the serving cases send."""
    row_id: str | None = None
    """A column naming each entity row, carried through training frames as a user's would be."""
    frame_views: tuple[str, ...] = ()
    """Feature views of the few-views training-frame case, the one with a hand-written floor."""
    frame_floor_sql: FloorSql | None = None
    """The floor of that case: the same point-in-time join, written by hand for DuckDB."""


def bench_dataset(settings: Settings) -> BenchDataset:
    """The `BENCH` of the `bench` module beside `dataset.module`, or the defaults if none."""
    module = settings.dataset.module
    package = module.rpartition(".")[0] if module else ""
    if not package:
        return BenchDataset()
    name = f"{package}.bench"
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        found = None
    if found is None:
        return BenchDataset()
    declared = getattr(importlib.import_module(name), "BENCH", None)
    if not isinstance(declared, BenchDataset):
        raise ConfigError(
            f"{name} declares no BENCH (a maquette.bench.dataset.BenchDataset).",
            f"Add `BENCH = BenchDataset(...)` to {name}, or remove the module.",
        )
    return declared


def entity_rows(
    settings: Settings, columns: Sequence[str], first: int, count: int = 100
) -> list[dict[str, Any]]:
    """`count` rows of the entity source, from row `first` on, with every one of `columns` set."""
    # Stock Feast cannot sort entity rows holding a null key (TypeError), so all keys are set.
    frame = entity_frame(settings).slice(first, 4 * count).select(list(columns)).drop_null()
    rows: list[dict[str, Any]] = frame.slice(0, count).to_pylist()
    return rows


def view_feature_refs(layer: FeatureLayer, views: Sequence[str]) -> list[str]:
    """`view:feature` of every feature of `views`, in the views' declared order."""
    return [f"{v}:{f.name}" for v in views for f in layer.view(v).features]
