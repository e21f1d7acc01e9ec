"""Data facts that explain an incident of the clean replay (a real event, not a false alarm).

Two facts, each computed from the data, never from the monitoring's own output:
- a gap: a feature view the incident's columns come from has no rows at all (any entity) for
  longer than its TTL during the incident's first window, and longer than any such gap in the
  28 days before (a feed that ended, not the quiet night that comes every night): "weather_hourly
  has no rows from 2013-12-30 23:00 to the end of its data";
- extreme labels: the window's mean label (of the incident's partition) lies beyond every
  window of the same size in the 28 days before (the recent normal, as for gaps; the first
  served weeks' is the test split's period, the baseline of `worse_than_test`): "mean arr_delay
  from 2013-12-05 00:00 to 2013-12-06 00:00: 41.47, above every daily window's of the 28 days
  before (max 30.12)". A storm day is a real event even when a summer storm was worse.
An incident neither explains is counted as unexplained (a false alarm, or a fault).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

import pandas as pd

from maquette.bench.alerts_inject import batch_view, project_views
from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.sql import duckdb_connection, sql_identifier, sql_literal
from maquette.features.layer import FeatureLayer
from maquette.features.read_plan import view_source
from maquette.monitoring.incidents import Incident
from maquette.window_spec import WindowSpec, parse_window

# Subjects that are not one partition value: every row (the parent model serves the rows of
# partitions without a model of their own; their labels are judged with all rows).
WHOLE = ("all", "__parent__")
# How far back a gap is compared with: the recent normal of the view's feed.
BASELINE = timedelta(days=28)


@dataclass(frozen=True)
class Explanation:
    """Whether a data fact explains an incident, and the fact in words."""

    explained: bool
    fact: str = ""


def _when(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M}"


class Facts:
    """The facts of one replay project's data, computed once per view or window size."""

    def __init__(self, settings: Settings, layer: FeatureLayer) -> None:
        self.settings, self.layer = settings, layer
        self.views = project_views(layer)
        self.view_of = {f: v for v, (features, _) in self.views.items() for f in features}
        self._times: dict[str, pd.Series] = {}

    def explain(self, incident: Incident) -> Explanation:
        start = pd.Timestamp(incident.first_window_start).to_pydatetime()
        first = incident.windows[0] if incident.windows else {}
        end = pd.Timestamp(first.get("end", incident.last_window_end)).to_pydatetime()
        views = self._views_of(incident)
        for view in views:
            if fact := self.gap(view, start, end):
                return Explanation(True, fact)
        labelled = incident.model is not None and incident.kind in ("accuracy", "drift")
        if labelled and (
            fact := self.extreme_labels(
                str(incident.model),
                incident.subject,
                start,
                end,
                self.label_window(str(incident.model), incident.kind),
            )
        ):
            return Explanation(True, fact)
        return Explanation(False)

    def _views_of(self, incident: Incident) -> list[str]:
        if incident.kind == "freshness":
            return [incident.subject] if incident.subject in self.views else []
        # Accuracy names metrics, not features: only its labels can explain it.
        return sorted({self.view_of[c] for c in incident.columns if c in self.view_of})

    def _row_times(self, view: str) -> pd.Series:
        """The distinct event times of a view's rows, sorted (any entity)."""
        if view not in self._times:
            feature_view = batch_view(self.layer, view)
            source = view_source(feature_view, [])
            sql = (
                f"SELECT DISTINCT {sql_identifier(source.timestamp_field)}::TIMESTAMPTZ AS t "
                f"FROM read_parquet({sql_literal(str(source.path))}) ORDER BY t"
            )
            times = duckdb_connection(quiet=True).sql(sql).df()["t"]
            self._times[view] = pd.to_datetime(times, utc=True)
        return self._times[view]

    def gap(self, view: str, start: datetime, end: datetime) -> str | None:
        """A stretch of [start, end) in which `view` has no row younger than its TTL, longer
        than any such stretch in the BASELINE before `start` (a quiet night that comes every
        night is the normal state the model was trained on, not an event)."""
        ttl = batch_view(self.layer, view).ttl
        if not ttl or ttl <= timedelta(0):
            return None  # values never expire: no gap makes them missing
        times = self._row_times(view)
        lo, hi = pd.Timestamp(start), pd.Timestamp(end)
        if times.empty or times.iloc[0] >= hi:
            return f"{view} has no rows before {_when(end)}"
        # Uncovered stretches: from a row's time + TTL to the next row (none: for ever).
        nxt = times.shift(-1)
        length = (nxt - times).fillna(pd.Timedelta.max)
        uncovered = length > ttl
        inside = uncovered & (times + ttl < hi) & (nxt.isna() | (nxt > lo))
        if not inside.any():
            return None
        before = (times >= lo - BASELINE) & (times < lo)
        usual = length[before & nxt.notna()].max() if before.any() else pd.Timedelta(0)
        usual = pd.Timedelta(0) if pd.isna(usual) else usual
        longest = length[inside].idxmax()
        if length[longest] <= usual:
            return None
        last, after = times[longest], nxt[longest]
        until = "the end of its data" if pd.isna(after) else _when(after.to_pydatetime())
        return (
            f"{view} has no rows from {_when(last.to_pydatetime())} to {until} (TTL {ttl}; "
            f"longest gap in the {BASELINE.days} days before: {usual})"
        )

    def extreme_labels(
        self, model: str, subject: str, start: datetime, end: datetime, window: WindowSpec
    ) -> str | None:
        """The window's mean label against the windows of the same size in the BASELINE before."""
        lo, hi = _label_extremes(
            self.settings, model, subject, window.text, start - BASELINE, start
        )
        if lo is None or hi is None:
            return None
        mean = _mean_label(self.settings, model, subject, start, end)
        if mean is None:
            return None
        where = "" if subject in WHOLE else f" at {subject}"
        label = self.settings.model_spec(model).label
        if mean > hi:
            side, bound, value = "above", "max", hi
        elif mean < lo:
            side, bound, value = "below", "min", lo
        else:
            return None
        return (
            f"mean {label}{where} from {_when(start)} to {_when(end)}: {mean:.2f}, {side} every "
            f"{window.name} window's of the {BASELINE.days} days before ({bound} {value:.2f})"
        )

    def label_window(self, model: str, kind: str) -> WindowSpec:
        """The windows an incident of `kind` judges: drift's, else the alert window (daily for
        count windows, whose size in time varies)."""
        resolved = self.settings.monitoring_of(model)
        window = resolved.drift_window if kind == "drift" else resolved.alert_window
        return window if window.is_time else parse_window("daily")


def _entity_table(settings: Settings, model: str) -> tuple[Path, str, str, str | None]:
    spec = settings.model_spec(model)
    source = datasets.require_loaded(settings, settings.entity_source(spec))
    return source, spec.timestamp_column, spec.label, spec.partition_by


@cache
def _label_extremes_cached(
    source: Path,
    ts: str,
    label: str,
    partition: str | None,
    subject: str,
    window: str,
    lo: datetime,
    hi: datetime,
    row_filter: str | None,
) -> tuple[float | None, float | None]:
    spec = parse_window(window)
    column = f"{sql_identifier(ts)}::TIMESTAMPTZ"
    where = [
        f"({label}) IS NOT NULL",
        f"{column} >= {sql_literal(lo.isoformat())}::TIMESTAMPTZ",
        f"{column} < {sql_literal(hi.isoformat())}::TIMESTAMPTZ",
    ]
    if partition and subject not in WHOLE:
        where.append(f"{sql_identifier(partition)}::VARCHAR = {sql_literal(subject)}")
    if row_filter:
        where.append(f"({row_filter})")
    sql = (
        f"SELECT min(m), max(m) FROM (SELECT {spec.start_sql(column)} AS w, "
        f"avg(({label})::DOUBLE) AS m, count(*) AS n FROM read_parquet({sql_literal(str(source))}) "
        f"WHERE {' AND '.join(where)} GROUP BY w) "
        f"WHERE n >= 30 AND w >= {sql_literal(lo.isoformat())}::TIMESTAMPTZ"
    )
    low, high = duckdb_connection(quiet=True).execute(sql).fetchall()[0]
    return low, high


def _label_extremes(
    settings: Settings, model: str, subject: str, window: str, lo: datetime, hi: datetime
) -> tuple[float | None, float | None]:
    """(min, max) of the mean label over the whole windows (>= 30 labels) inside [lo, hi)."""
    source, ts, label, partition = _entity_table(settings, model)
    return _label_extremes_cached(
        source,
        ts,
        label,
        partition,
        subject,
        window,
        lo,
        hi,
        settings.model_spec(model).row_filter,
    )


def _mean_label(
    settings: Settings, model: str, subject: str, start: datetime, end: datetime
) -> float | None:
    source, ts, label, partition = _entity_table(settings, model)
    column = f"{sql_identifier(ts)}::TIMESTAMPTZ"
    where = [
        f"({label}) IS NOT NULL",
        f"{column} >= {sql_literal(start.isoformat())}::TIMESTAMPTZ",
        f"{column} < {sql_literal(end.isoformat())}::TIMESTAMPTZ",
    ]
    if partition and subject not in WHOLE:
        where.append(f"{sql_identifier(partition)}::VARCHAR = {sql_literal(subject)}")
    row_filter = settings.model_spec(model).row_filter
    if row_filter:
        where.append(f"({row_filter})")
    sql = (
        f"SELECT avg(({label})::DOUBLE) FROM read_parquet({sql_literal(str(source))}) "
        f"WHERE {' AND '.join(where)}"
    )
    (mean,) = duckdb_connection(quiet=True).execute(sql).fetchall()[0]
    return None if mean is None else float(mean)
