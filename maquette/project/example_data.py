"""The `--example` dataset: a small ratings shop, generated so every run writes the same files.

`items.csv` holds static item attributes (no time column); `ratings.csv` one row per rating
with integer `user_id` and `item_id`, `rated_at` in unix seconds, `rating` (1-5) and `liked`
(0/1), both known when the rating is made. Ratings follow the item's quality (which drifts from
day to day, so recent ratings of an item say something), the user's leniency, the category's
appeal to the user, weekends and the hour: every generated feature has something to find.

April and May are the history the models train on; June is traffic after their splits and
after the stream's cutover, what `maquette bench alerts` replays (clean, then with faults).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

START = datetime(2024, 4, 1, tzinfo=UTC)
# The models' splits end and the stream takes over here (stream.backfill_before).
CUTOVER = datetime(2024, 6, 1, tzinfo=UTC)
END = datetime(2024, 7, 1, tzinfo=UTC)  # [CUTOVER, END): the month the alert benchmark replays
CATEGORIES = ("books", "games", "music", "film")
ITEMS = 40
USERS = 300
RATINGS_PER_DAY = 300  # ~27,000 rows: each model trains in seconds on two cores


@dataclass(frozen=True)
class _Shop:
    """What every rating is drawn from: items, users and each item's quality per day."""

    category: np.ndarray
    price: np.ndarray
    quality: np.ndarray  # items x days since START
    leniency: np.ndarray
    taste: np.ndarray  # users x categories


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
    # April-May is drawn first, in the order it always was, and June after it from the same
    # generator: the history (and so the trained models) is what earlier versions wrote.
    history = (CUTOVER - START).days
    # Each item's quality walks from day to day; users differ in leniency and in taste.
    quality = rng.normal(0, 0.6, ITEMS)[:, None] + np.cumsum(
        rng.normal(0, 0.15, (ITEMS, history)), 1
    )
    leniency = rng.normal(0, 0.5, USERS)
    taste = rng.normal(0, 0.5, (USERS, len(CATEGORIES)))
    past = _Shop(category, price, quality, leniency, taste)
    first, popularity = _period(rng, past, 0, history, None)
    # June: the same shop, its items' quality walking on from where May left it.
    walk = quality[:, -1:] + np.cumsum(rng.normal(0, 0.15, (ITEMS, (END - CUTOVER).days)), 1)
    shop = _Shop(category, price, np.hstack([quality, walk]), leniency, taste)
    second, _ = _period(rng, shop, history, (END - START).days, popularity)
    return first + second


def _period(
    rng: np.random.Generator,
    shop: _Shop,
    first_day: int,
    end_day: int,
    popularity: np.ndarray | None,
) -> tuple[list[tuple[int, int, int, int, int]], np.ndarray]:
    """Ratings of days [first_day, end_day) since START, in time order, and item popularity."""
    n = (end_day - first_day) * RATINGS_PER_DAY
    # Evenings are busier; popular items are rated more often.
    hour = rng.choice(24, n, p=_hour_weights())
    seconds = rng.integers(0, 3600, n)
    day = first_day + rng.integers(0, end_day - first_day, n)
    if popularity is None:
        popularity = _softmax(rng.normal(0, 0.7, ITEMS))
    item = rng.choice(ITEMS, n, p=popularity)
    user = rng.integers(0, USERS, n)
    at = int(START.timestamp()) + day * 86_400 + hour * 3600 + seconds
    weekend = ((day + START.weekday()) % 7 >= 5).astype(float)
    raw = (
        3.3
        + shop.quality[item, day]
        + shop.leniency[user]
        + shop.taste[user, shop.category[item]]
        + 0.3 * weekend
        - 0.2 * (hour < 7)
        - 0.01 * shop.price[item]
        + rng.normal(0, 0.7, n)
    )
    rating = np.clip(np.rint(raw), 1, 5).astype(int)
    order = np.lexsort((item, user, at))
    rows = [
        (int(user[i]) + 1, int(item[i]) + 1, int(at[i]), int(rating[i]), int(rating[i] >= 4))
        for i in order
    ]
    return rows, popularity


def _hour_weights() -> np.ndarray:
    hours = np.arange(24)
    weights = 1.0 + 2.0 * np.exp(-(((hours - 20) / 3.0) ** 2)) + 0.8 * ((hours >= 8) & (hours < 18))
    return np.asarray(weights / weights.sum())


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return np.asarray(e / e.sum())
