"""Fault injection into what the platform sees, never into the monitoring code.

- null_features / unit_skew: after every materialization (and stream step) while the fault
  lasts, the newest row of each matching entity is written again to Redis, in Feast's layout
  through the library's own writer (`redis_layout`), with the features null, 0 or rescaled;
  at repair the true newest rows are written back (what a pipeline fix plus a backfill does).
- stale_view: the view is left out of materialization while the fault lasts; the first
  materialization after repair catches up from where the view's last run ended.
- label_shift: a label file (keyed by entity and time, with the true availability time)
  holding the shifted labels is ingested through `labels.ingest_labels` at onset: a file's
  label wins over the declared source's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureView

from maquette.bench.alerts_faults import (
    Fault,
    FaultsFile,
    LabelShift,
    NullFeatures,
    StaleView,
    UnitSkew,
)
from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.redis_server import redis_url
from maquette.data.sql import duckdb_connection, sql_literal
from maquette.errors import ConfigError
from maquette.features import redis_layout as wire
from maquette.features.layer import FeatureLayer
from maquette.features.point_in_time import latest_rows_sql
from maquette.features.read_plan import join_key_types, view_source
from maquette.monitoring import labels

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def batch_view(layer: FeatureLayer, name: str) -> FeatureView:
    """A materialized (or streamed) feature view by name; an on-demand one is refused."""
    view = layer.view(name)
    if not isinstance(view, FeatureView):
        raise ConfigError(
            f"{name!r} is an on-demand view: its values are computed per request, not stored.",
            "Inject the fault into a feature view whose values are stored online.",
        )
    return view


def view_sql(layer: FeatureLayer, view: str, where: str | None, clock: datetime = EPOCH) -> str:
    """The newest row per entity of `view` as of `clock` (Feast's pull-latest) matching `where`."""
    feature_view = batch_view(layer, view)
    source = view_source(feature_view, [f.name for f in feature_view.features])
    latest = latest_rows_sql(source, EPOCH, clock)
    return f"SELECT * FROM ({latest}) WHERE {where or 'TRUE'}"


def entity_sql(settings: Settings, fault: LabelShift) -> str:
    """The shifted labels of the fault's entity rows, keyed as a label file is (entity keys
    and the label's time), with the true availability time."""
    spec = settings.model_spec(fault.model)
    spec_labels = spec.labels
    assert spec_labels is not None  # checked by check_faults
    source = datasets.require_loaded(settings, spec_labels.source or settings.entity_source(spec))
    keys = ", ".join(_q(k) for k in spec_labels.join_keys)
    when = _q(spec_labels.time_column)
    known = (
        f", {_q(spec_labels.available_at)} AS label_available_at"
        if spec_labels.available_at
        else ""
    )
    conditions = [
        f"({spec.label}) IS NOT NULL",
        f"{when}::TIMESTAMPTZ >= {sql_literal(fault.start.isoformat())}::TIMESTAMPTZ",
        f"{when}::TIMESTAMPTZ < {sql_literal(fault.end.isoformat())}::TIMESTAMPTZ",
        f"({fault.where or 'TRUE'})",
    ]
    return (
        f"SELECT {keys}, {when}, (({spec.label})::DOUBLE + {float(fault.add)}) AS label{known} "
        f"FROM read_parquet({sql_literal(str(source))}) WHERE {' AND '.join(conditions)}"
    )


def _served_sql(layer: FeatureLayer, fault: NullFeatures | UnitSkew, clock: datetime) -> str:
    """The rows the faulty pipeline serves: the newest rows of the matching entities with the
    fault's features replaced."""
    feature_view = batch_view(layer, fault.view)
    keys = list(join_key_types(feature_view))
    if isinstance(fault, NullFeatures):
        hit = fault.features or [f.name for f in feature_view.features]
        value = "NULL::DOUBLE" if fault.value is None else "0"
        changed = {f: value for f in hit}
    else:
        changed = {fault.feature: f"({_q(fault.feature)} * {fault.scale} + {fault.offset})"}
    columns = [*(_q(k) for k in keys), *(f"{v} AS {_q(f)}" for f, v in changed.items()), "__ts"]
    return f"SELECT {', '.join(columns)} FROM ({view_sql(layer, fault.view, fault.where, clock)})"


def _true_sql(layer: FeatureLayer, fault: NullFeatures | UnitSkew, clock: datetime) -> str:
    """The newest true rows of the entities the fault hit (written back at repair)."""
    return view_sql(layer, fault.view, fault.where, clock)


def write_rows(settings: Settings, layer: FeatureLayer, view: str, rows: pa.Table) -> int:
    """Write rows (join keys, some features, `__ts`) to Redis in Feast's layout, whatever Redis
    holds (an injected fault and its repair overwrite values of the same event time)."""
    if rows.num_rows == 0:
        return 0
    feature_view = batch_view(layer, view)
    key_types = join_key_types(feature_view)
    dtypes = {f.name: f.dtype for f in feature_view.features}
    features = [c for c in rows.column_names if c in dtypes]
    keys = wire.encode_entity_keys(
        {k: rows[k].combine_chunks() for k in key_types},
        key_types,
        settings.feast.project,
        rows.num_rows,
    )
    ts_proto, _, _ = wire.encode_timestamps(rows["__ts"].combine_chunks())
    commands = wire.hset_commands(
        keys,
        wire.ts_field(view),
        ts_proto,
        [wire.field_hash(view, f) for f in features],
        [wire.encode_values(rows[f].combine_chunks(), dtypes[f]) for f in features],
    )
    writer = wire.RespWriter(redis_url(settings))
    try:
        writer.send(wire.concat(commands))
        writer.replies(len(commands))
    finally:
        writer.close()
    return int(rows.num_rows)


@dataclass
class FaultEvent:
    """Something the injector did: onset, a write, a repair."""

    fault: str
    at: datetime
    what: str
    rows: int = 0


@dataclass
class Injector:
    """Applies the faults along the replay clock (the clean replay has none)."""

    settings: Settings
    layer: FeatureLayer
    faults: list[Fault]
    folder: Path
    events: list[FaultEvent] = field(default_factory=list)
    con: duckdb.DuckDBPyConnection = field(default_factory=lambda: duckdb_connection(quiet=True))
    _started: set[str] = field(default_factory=set)
    _repaired: set[str] = field(default_factory=set)

    def held_views(self, clock: datetime) -> set[str]:
        """Views left out of the materialization at `clock` (stale_view faults in progress)."""
        return {f.view for f in self.faults if isinstance(f, StaleView) and f.active(clock)}

    def after_refresh(self, clock: datetime) -> None:
        """After the online store moved to `clock`: write the faulty (or repaired) values,
        ingest the shifted labels at onset, and note onsets and repairs."""
        for fault in self.faults:
            if fault.active(clock) and fault.name not in self._started:
                self._started.add(fault.name)
                self.events.append(FaultEvent(fault.name, clock, "onset"))
                if isinstance(fault, LabelShift):
                    self._shift_labels(fault, clock)
            if isinstance(fault, NullFeatures | UnitSkew) and fault.active(clock):
                rows = self.con.sql(_served_sql(self.layer, fault, clock))
                write_rows(self.settings, self.layer, fault.view, rows.to_arrow_table())
            elif clock >= fault.end and fault.name in self._started - self._repaired:
                self._repaired.add(fault.name)
                written = 0
                if isinstance(fault, NullFeatures | UnitSkew):
                    true = self.con.sql(_true_sql(self.layer, fault, clock))
                    written = write_rows(
                        self.settings, self.layer, fault.view, true.to_arrow_table()
                    )
                self.events.append(FaultEvent(fault.name, clock, "repair", written))

    def _shift_labels(self, fault: LabelShift, clock: datetime) -> None:
        table = self.con.sql(entity_sql(self.settings, fault)).to_arrow_table()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{_file_stem(fault.name)}.parquet"
        pq.write_table(table, path)
        result = labels.ingest_labels(self.settings, fault.model, path)
        self.events.append(FaultEvent(fault.name, clock, "labels ingested", result.rows))


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")[:60] or "fault"


def project_views(layer: FeatureLayer) -> dict[str, tuple[list[str], bool]]:
    """Per batch feature view: its features, and whether a push source (the stream) feeds it."""
    from feast.data_source import PushSource  # Feast is loaded by the layer already

    out = {}
    for view in layer.feature_views():
        pushed = isinstance(view.stream_source, PushSource) or isinstance(
            view.batch_source, PushSource
        )
        out[view.name] = ([f.name for f in view.features], pushed)
    return out


def check_faults(settings: Settings, layer: FeatureLayer, faults: FaultsFile) -> None:
    """Names in the faults file against the project (views, features, models with labels),
    each fault's SQL run once by DuckDB; one ConfigError listing every problem."""
    views = project_views(layer)
    problems: list[str] = []
    for fault in faults.faults:
        problems += [f"fault {fault.name!r}: {p}" for p in _fault_problems(settings, views, fault)]
    if not problems:
        for fault in faults.faults:
            try:
                _dry_run(settings, layer, fault)
            except Exception as exc:  # DuckDB's own message says what is wrong with the SQL
                first = str(exc).strip().splitlines()[0]
                problems.append(f"fault {fault.name!r}: its SQL does not run: {first}")
    if problems:
        raise ConfigError(
            "the faults file does not fit this project:\n  " + "\n  ".join(problems),
            "Name views, features and models of this project (`maquette features list`, "
            "`maquette models list`); write `where` as DuckDB SQL over the view's columns "
            "(label_shift: over the entity rows).",
        )


def _fault_problems(
    settings: Settings, views: dict[str, tuple[list[str], bool]], fault: Fault
) -> list[str]:
    problems = []
    if isinstance(fault, NullFeatures | StaleView | UnitSkew):
        if fault.view not in views:
            return [f"no feature view {fault.view!r} (views: {', '.join(sorted(views))})"]
        features, pushed = views[fault.view]
        wanted = (fault.features or []) if isinstance(fault, NullFeatures) else []
        wanted += [fault.feature] if isinstance(fault, UnitSkew) else []
        if unknown := [f for f in wanted if f not in features]:
            problems.append(f"view {fault.view} has no feature {unknown} (it has {features})")
        if isinstance(fault, StaleView) and pushed:
            problems.append(
                f"view {fault.view} is fed by the stream, not materialized: stale_view needs "
                "a batch view"
            )
    models = [fault.expect.model] if fault.expect.model else []
    models += [fault.model] if isinstance(fault, LabelShift) else []
    for model in models:
        if model not in settings.models:
            problems.append(f"no model {model!r} (models: {', '.join(sorted(settings.models))})")
        elif isinstance(fault, LabelShift) and settings.models[model].labels is None:
            problems.append(f"model {model!r} declares no labels to shift")
    return problems


def _dry_run(settings: Settings, layer: FeatureLayer, fault: Fault) -> None:
    con = duckdb_connection(quiet=True)
    if isinstance(fault, NullFeatures | UnitSkew):
        con.sql(f"SELECT count(*) FROM ({_served_sql(layer, fault, fault.start)})").fetchall()
    elif isinstance(fault, LabelShift):
        con.sql(f"SELECT count(*) FROM ({entity_sql(settings, fault)})").fetchall()
