"""How often a feature is usually missing: its recent windows, not one training-wide rate.

A feature's missing share moves from window to window for reasons no pipeline broke. In
nycflights13 a weather station's pressure reading is absent for whole days (0% of one day's
flights, 70% of the next, in November), and on a day with few departures a carrier-hour more
often has none to average. One absent weather reading also hides the value from every flight of
that hour and airport, so a window's predictions are not independent draws: a binomial test of
one day against the training-wide null share fires on ordinary days.

So each window is judged against the same-sized windows before it, within
`monitoring.reference_trailing` (28 days):
- the version's own split rows of that period, before serving began (what the first served
  windows are compared with), and
- its served windows that were not themselves judged missing, so a fault that lasts never
  becomes the usual and its incident stays open while it lasts.

With at least `MIN_WINDOWS` such windows, a feature breaches when its share is more than
`thresholds.missing_rate_increase_above` above their mean *and* above the highest of them.
With fewer (a new version's first days without split rows before them, count windows), the
training null share is the usual, as before.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from maquette import registry
from maquette.config import Settings
from maquette.data.sql import duckdb_connection, sql_identifier, sql_literal
from maquette.training.model_types import SPLITS
from maquette.version_record import VersionRecord
from maquette.window_spec import WindowSpec, parse_duration

# Earlier windows needed before their spread replaces the training null share.
MIN_WINDOWS = 7

HISTORY_COLUMNS = ["version", "window_start", "window_end", "feature", "rows", "missing_rate"]


@dataclass(frozen=True)
class Usual:
    """A feature's usual missing share before a window: mean and highest of earlier windows."""

    rate: float
    highest: float
    windows: int  # how many windows; 0 when `rate` is the training null share

    def describe(self) -> str:
        if not self.windows:
            return f"training {self.rate:.1%}"
        return f"usually {self.rate:.1%}, at most {self.highest:.1%} in {self.windows} windows"


class MissingHistory:
    """Earlier windows' missing shares of one version's features, as windows are judged."""

    def __init__(self, trailing: timedelta, training: dict[str, float]) -> None:
        self.trailing, self.training = trailing, training
        self._seen: dict[str, list[tuple[pd.Timestamp, float]]] = defaultdict(list)

    def add(self, feature: str, end: pd.Timestamp, rate: float) -> None:
        self._seen[feature].append((pd.Timestamp(end), float(rate)))

    def usual(self, feature: str, start: pd.Timestamp) -> Usual:
        since = pd.Timestamp(start) - self.trailing
        recent = [r for end, r in self._seen[feature] if since < end <= pd.Timestamp(start)]
        if len(recent) < MIN_WINDOWS:
            base = self.training.get(feature, 0.0)
            return Usual(base, base, 0)
        return Usual(sum(recent) / len(recent), max(recent), len(recent))


def split_windows(
    settings: Settings,
    name: str,
    version: str,
    record: VersionRecord,
    spec: WindowSpec,
    before: datetime,
) -> pd.DataFrame:
    """Per complete time window in the trailing period before `before` and feature: the share
    of the version's split rows (train, validation, test) with the feature null."""
    if not spec.is_time or not record.feature_names:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    hi = pd.Timestamp(spec.start_of(before))
    lo = hi - parse_duration(settings.monitoring.reference_trailing)
    paths = [
        data.path
        for split in SPLITS
        if (data := record.data.get(split)) is not None and Path(data.path).is_file()
    ]
    if not paths:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    ts = sql_identifier(settings.model_spec(name).timestamp_column)
    shares = ", ".join(
        f"avg(({sql_identifier(f)} IS NULL)::DOUBLE) AS {sql_identifier(f'm{i}')}"
        for i, f in enumerate(record.feature_names)
    )
    files = "[" + ", ".join(sql_literal(str(p)) for p in paths) + "]"
    wide = (
        duckdb_connection(quiet=True)
        .sql(f"""
        WITH r AS (SELECT *, {spec.start_sql(f"{ts}::TIMESTAMPTZ")} AS wkey
                   FROM read_parquet({files}, union_by_name = true)
                   WHERE {ts}::TIMESTAMPTZ >= {sql_literal(lo.isoformat())}::TIMESTAMPTZ
                     AND {ts}::TIMESTAMPTZ < {sql_literal(hi.isoformat())}::TIMESTAMPTZ)
        SELECT wkey, count(*) AS rows, {shares} FROM r GROUP BY wkey""")
        .df()
    )
    if wide.empty:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    wide = wide[wide["rows"] >= settings.monitoring_of(name).thresholds.min_rows]
    long = wide.melt(id_vars=["wkey", "rows"], var_name="column", value_name="missing_rate")
    long["feature"] = long["column"].map({f"m{i}": f for i, f in enumerate(record.feature_names)})
    start = pd.to_datetime(long["wkey"], utc=True)
    ends = {s: pd.Timestamp(spec.end_of(s.to_pydatetime())) for s in start.unique()}
    long = long.assign(version=version, window_start=start, window_end=start.map(ends))
    kept = long[long["window_end"] <= hi][HISTORY_COLUMNS]
    # In a fixed order: a GROUP BY's rows come in whatever order DuckDB's threads finish.
    return kept.sort_values(["version", "feature", "window_start"], ignore_index=True)


def split_history(settings: Settings, name: str, missing: pd.DataFrame) -> pd.DataFrame:
    """`split_windows` of each version in `live_metrics.feature_missing`'s frame, before its
    first served window."""
    if missing.empty:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    spec = settings.monitoring_of(name).alert_window
    parts = [
        split_windows(
            settings,
            name,
            str(version),
            registry.resolve(settings, f"{name}:{version}").record,
            spec,
            pd.Timestamp(rows["window_start"].min()).to_pydatetime(),
        )
        for version, rows in missing.groupby("version")
    ]
    found = [p for p in parts if len(p)]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=HISTORY_COLUMNS)
