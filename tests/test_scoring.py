"""Missing and stale flags, found once per pattern of statuses, equal a row-by-row reading."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import numpy as np

from maquette.features.online import NOT_FOUND, OUTSIDE_MAX_AGE, PRESENT, OnlineFeatures
from maquette.serving import scoring

NAMES = ["a", "b", "c", "d"]


def _served() -> Any:
    # `flags` reads only the model's feature names.
    return SimpleNamespace(model=SimpleNamespace(features=NAMES))


def _features(status: dict[str, list[str]], rows: int) -> OnlineFeatures:
    columns = {name: [1.0] * rows for name in status}
    return OnlineFeatures(list(status), columns, status, rows)


def test_flags_and_nulled_cells_equal_a_row_by_row_reading() -> None:
    rng = random.Random(18)
    choices = [PRESENT] * 4 + [NOT_FOUND, OUTSIDE_MAX_AGE]
    for _ in range(300):
        rows = rng.randrange(1, 30)
        # Some features absent from the read (an on-demand output has no status of its own).
        names = [n for n in NAMES if rng.random() < 0.9]
        status = {n: [rng.choice(choices) for _ in range(rows)] for n in names}
        found = scoring.flags(_served(), _features(status, rows))
        for i in range(rows):
            assert found.missing[i] == [n for n in names if status[n][i] == NOT_FOUND]
            assert found.stale[i] == [n for n in names if status[n][i] == OUTSIDE_MAX_AGE]
        x = np.ones((rows, len(NAMES)))
        for where, cols in found.nulled:
            x[np.ix_(where, cols)] = np.nan
        expected = np.array(
            [[n in status and status[n][i] != PRESENT for n in NAMES] for i in range(rows)]
        )
        assert (np.isnan(x) == expected).all()


def test_a_fresh_request_flags_nothing_and_nulls_nothing() -> None:
    found = scoring.flags(_served(), _features({n: [PRESENT] * 3 for n in NAMES}, 3))
    assert found.missing == [[], [], []] and found.stale == [[], [], []]
    assert found.nulled == []
