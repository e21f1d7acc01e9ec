"""The `--example` dataset: a small ratings shop, generated so every run writes the same files.

`items.csv` holds static item attributes (no time column); `ratings.csv` one row per rating
with integer `user_id` and `item_id`, `rated_at` in unix seconds, `rating` (1-5) and `liked`
(0/1), both known when the rating is made. Ratings follow the item's quality (which drifts from
day to day, so recent ratings of an item say something), the user's leniency, the category's
appeal to the user, weekends and the hour: every generated feature has something to find.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

START = datetime(2024, 4, 1, tzinfo=UTC)
END = datetime(2024, 6, 1, tzinfo=UTC)  # the stream takes over here (stream.backfill_before)
CATEGORIES = ("books", "games", "music", "film")
ITEMS = 40
USERS = 300
RATINGS_PER_DAY = 300  # ~18,000 rows: each model trains in seconds on two cores


def write_example_data(folder: Path, seed: int = 15) -> list[Path]:
    """Write `folder`/items.csv and `folder`/ratings.csv; the same seed gives the same files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    category = rng.integers(0, len(CATEGORIES), ITEMS)
    price = np.round(rng.lognormal(2.5, 0.5, ITEMS), 2)
    items = folder / "items.csv"
    with items.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["item_id", "category", "price"])
        for i in range(ITEMS):
            writer.writerow([i + 1, CATEGORIES[category[i]], f"{price[i]:.2f}"])
    ratings = folder / "ratings.csv"
    with ratings.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["user_id", "item_id", "rated_at", "rating", "liked"])
        writer.writerows(_ratings(rng, category, price))
    return [items, ratings]


def _ratings(
    rng: np.random.Generator, category: np.ndarray, price: np.ndarray
) -> list[tuple[int, int, int, int, int]]:
    days = (END - START).days
    n = days * RATINGS_PER_DAY
    # Each item's quality walks from day to day; users differ in leniency and in taste.
    quality = rng.normal(0, 0.6, ITEMS)[:, None] + np.cumsum(rng.normal(0, 0.15, (ITEMS, days)), 1)
    leniency = rng.normal(0, 0.5, USERS)
    taste = rng.normal(0, 0.5, (USERS, len(CATEGORIES)))
    # Evenings are busier; popular items are rated more often.
    hour = rng.choice(24, n, p=_hour_weights())
    seconds = rng.integers(0, 3600, n)
    day = rng.integers(0, days, n)
    item = rng.choice(ITEMS, n, p=_softmax(rng.normal(0, 0.7, ITEMS)))
    user = rng.integers(0, USERS, n)
    at = int(START.timestamp()) + day * 86_400 + hour * 3600 + seconds
    weekend = ((day + START.weekday()) % 7 >= 5).astype(float)
    raw = (
        3.3
        + quality[item, day]
        + leniency[user]
        + taste[user, category[item]]
        + 0.3 * weekend
        - 0.2 * (hour < 7)
        - 0.01 * price[item]
        + rng.normal(0, 0.7, n)
    )
    rating = np.clip(np.rint(raw), 1, 5).astype(int)
    order = np.lexsort((item, user, at))
    return [
        (int(user[i]) + 1, int(item[i]) + 1, int(at[i]), int(rating[i]), int(rating[i] >= 4))
        for i in order
    ]


def _hour_weights() -> np.ndarray:
    hours = np.arange(24)
    weights = 1.0 + 2.0 * np.exp(-(((hours - 20) / 3.0) ** 2)) + 0.8 * ((hours >= 8) & (hours < 18))
    return np.asarray(weights / weights.sum())


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return np.asarray(e / e.sum())
