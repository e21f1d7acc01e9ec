"""Late-arriving labels and their join with logged predictions.

Labels come from the model's declared label source (the actual outcome, known some time after
the prediction) or from a Parquet/CSV file keyed by `prediction_id` or by the entity keys
and the label's `time_column`. That time matches either the request row's own field of that
name (`labels.time_from: row`) or the logged request time (`request`: the body's `as_of`, else
the arrival time). `join_labels` produces the scored-predictions table: every logged
prediction (shadows excluded) with its label when known, the delay between prediction and
label, and the version and partition that answered.

Hostile input: a label file is cast at ingest (labels to DOUBLE, times to TIMESTAMPTZ) and
refused whole, with the failing row numbers, if any value does not cast: nothing of it is kept,
so one bad file never breaks a later join. The join leaves out logged predictions whose request
time (the client's `as_of`) is not plausible for monitoring (`monitored_period`): before the
model's training window by more than a year, or later than the server's clock (plus a day).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from maquette.config import Settings
from maquette.data import sources as datasets
from maquette.data.sql import duckdb_connection, sql_identifier, sql_literal
from maquette.errors import ConfigError, DataNotLoaded, InvalidEntityFrame
from maquette.model_spec import LabelSpec
from maquette.serving import prediction_log as predictions

LABEL = "label"
# Monitored request times: from this long before the model's training window starts...
BEFORE_TRAINING = timedelta(days=366)
# ...to this far past the server's clock (a client's clock a little ahead is not hostile).
AHEAD_OF_CLOCK = timedelta(days=1)
# Failing rows listed in the message refusing a label file.
SHOWN_ROWS = 10


@dataclass
class IngestResult:
    rows: int
    path: Path
    unknown_ids: int = 0


def labels_path(settings: Settings, name: str) -> Path:
    """Labels from the model's declared source (rebuilt by every ingest from it)."""
    return settings.offline_store / "labels" / f"{name}.parquet"


def label_files_dir(settings: Settings, name: str) -> Path:
    """Labels ingested from files (`labels ingest --file`), one Parquet file per input file.

    Kept apart from the declared source's labels so that a later ingest from the source (every
    monitoring pass does one) does not overwrite them.
    """
    return settings.offline_store / "labels" / f"{name}.files"


def scored_path(settings: Settings, name: str) -> Path:
    return settings.offline_store / "scored" / f"{name}.parquet"


def _spec(settings: Settings, name: str) -> LabelSpec:
    spec = settings.model_spec(name)
    if spec.labels is None:
        raise ConfigError(
            f"model {name!r} declares no label source.",
            f"Add models.{name}.labels (join_keys, time_column) to maquette.yaml.",
        )
    return spec.labels


def _con(settings: Settings | None = None) -> duckdb.DuckDBPyConnection:
    if settings is None:
        return duckdb_connection()
    # Bounded memory for large logs: DuckDB spills to disk instead of growing.
    con = duckdb_connection(
        memory_limit=settings.monitoring.join_memory_limit,
        spill_dir=settings.state_dir / "duckdb_tmp",
    )
    con.execute("SET preserve_insertion_order = false")
    return con


def ingest_labels(settings: Settings, name: str, file: Path | None = None) -> IngestResult:
    """Store the labels of model `name`: from `file` if given, else from its declared source."""
    spec, labels = settings.model_spec(name), _spec(settings, name)
    con = _con()
    target = labels_path(settings, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if file is not None:
        if not file.is_file():
            raise InvalidEntityFrame(
                f"label file {file} does not exist.", "Pass a Parquet or CSV file."
            )
        reader = "read_csv_auto" if file.suffix.lower() == ".csv" else "read_parquet"
        table = con.sql(f"SELECT * FROM {reader}({sql_literal(file)})").to_arrow_table()
        needed = (
            {"prediction_id", LABEL}
            if "prediction_id" in table.column_names
            else {*labels.join_keys, labels.time_column, LABEL}
        )
        if missing := sorted(needed - set(table.column_names)):
            raise InvalidEntityFrame(
                f"label file {file.name} lacks column(s) {missing}.",
                f"Key labels by prediction_id, or by {labels.join_keys} and "
                f"{labels.time_column!r}; the value goes in a column named {LABEL!r}.",
            )
        table = _typed_labels(con, table, file, labels)
        unknown = _unknown_ids(settings, name, table)
        # Named by content: ingesting the same file twice stores it once.
        digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
        target = label_files_dir(settings, name) / f"{file.stem}-{digest}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        pq.write_table(table, partial)
        partial.replace(target)
        return IngestResult(table.num_rows, target, unknown)
    source = datasets.require_loaded(settings, labels.source or settings.entity_source(spec))
    keys = ", ".join(sql_identifier(k) for k in labels.join_keys)
    known = (
        f", {sql_identifier(labels.available_at)} AS label_available_at"
        if labels.available_at
        else ""
    )
    # spec.label is an SQL expression of maquette.yaml (code, as the docs say), not data.
    table = con.sql(
        f"SELECT {keys}, {sql_identifier(labels.time_column)}, ({spec.label})::DOUBLE AS "
        f"{LABEL}{known} FROM read_parquet({sql_literal(source)}) WHERE ({spec.label}) IS NOT NULL"
    ).to_arrow_table()
    pq.write_table(table, target)
    return IngestResult(table.num_rows, target)


def _typed_labels(
    con: duckdb.DuckDBPyConnection, table: pa.Table, file: Path, labels: LabelSpec
) -> pa.Table:
    """The label file's rows with the label as DOUBLE and its times as TIMESTAMPTZ; the file is
    refused (nothing of it stored) if any value does not cast, naming the rows that failed."""
    casts = {LABEL: "DOUBLE"}
    if "prediction_id" not in table.column_names:
        casts[labels.time_column] = "TIMESTAMPTZ"
    if "label_available_at" in table.column_names:
        casts["label_available_at"] = "TIMESTAMPTZ"
    con.register("__labels", table)
    try:
        checks = " OR ".join(
            f"({sql_identifier(c)} IS NOT NULL AND TRY_CAST({sql_identifier(c)} AS {t}) IS NULL)"
            for c, t in casts.items()
        )
        failed = con.sql(
            f"SELECT n FROM (SELECT row_number() OVER () AS n, * FROM __labels) "
            f"WHERE {checks} ORDER BY n"
        ).fetchall()
        if failed:
            rows = [int(r[0]) for r in failed]
            shown = ", ".join(map(str, rows[:SHOWN_ROWS]))
            more = f" and {len(rows) - SHOWN_ROWS:,} more" if len(rows) > SHOWN_ROWS else ""
            columns = ", ".join(f"{c} as {t}" for c, t in casts.items())
            raise InvalidEntityFrame(
                f"label file {file.name}: {len(rows):,} row(s) hold a value that is not a number "
                f"or time where one is expected ({columns}): row(s) {shown}{more} (counting "
                "data rows from 1). Nothing of the file was stored.",
                "Fix or remove those rows (an unknown label is an empty cell, not text such "
                "as 'N/A'), then ingest the file again.",
            )
        select = ", ".join(
            f"{sql_identifier(c)}::{casts[c]} AS {sql_identifier(c)}"
            if c in casts
            else sql_identifier(c)
            for c in table.column_names
        )
        return con.sql(f"SELECT {select} FROM __labels").to_arrow_table()
    finally:
        con.unregister("__labels")


def monitored_period(settings: Settings, name: str) -> tuple[datetime, datetime]:
    """[first, last) request times monitoring looks at: a year before the model's training
    window to a day past the server's clock. A request time outside (a client's as_of in year 1
    or 9999, or spread over centuries) is left out and counted, never a failing pass."""
    train_start = settings.model_spec(name).split.train.start
    return train_start - BEFORE_TRAINING, datetime.now(UTC) + AHEAD_OF_CLOCK


def ignored_requests(settings: Settings, name: str) -> int:
    """Logged predictions of `name` whose request time is outside `monitored_period` (counting
    a redelivered copy as many times as it was drained)."""
    first, last = monitored_period(settings, name)
    folder = settings.path(settings.predictions.folder)
    files = sql_literal(f"{folder}/date=*/model={name}/*.parquet")
    if not any(folder.glob(f"date=*/model={name}/*.parquet")):
        return 0
    con = _con()
    outside = f"NOT (request_time >= {_instant(first)} AND request_time < {_instant(last)})"
    found = con.execute(
        f"SELECT count(*) FROM read_parquet({files}, union_by_name = true) "
        f"WHERE model = {sql_literal(name)} AND {outside}"
    ).fetchone()
    return int(found[0]) if found else 0


def _instant(when: datetime) -> str:
    return f"{sql_literal(when.isoformat())}::TIMESTAMPTZ"


def _label_sources(
    con: duckdb.DuckDBPyConnection, settings: Settings, name: str, labels: LabelSpec
) -> tuple[list[str], list[str]]:
    """SELECTs over the stored labels: (keyed by prediction_id, keyed by entity and time).

    Each yields the key columns, `label`, `label_available_at` and `__source` (0: a file,
    1: the declared source), so the join can prefer a file's label.
    """
    by_id: list[str] = []
    by_entity: list[str] = []
    files = sorted(label_files_dir(settings, name).glob("*.parquet"))
    declared = labels_path(settings, name)
    for source, path in [(0, f) for f in files] + ([(1, declared)] if declared.is_file() else []):
        relation = f"read_parquet({sql_literal(path)})"
        present = [r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {relation}").fetchall()]
        known = "label_available_at" if "label_available_at" in present else "NULL"
        by_key = "prediction_id" in present
        keys = ["prediction_id"] if by_key else [*labels.join_keys, labels.time_column]
        columns = ", ".join(sql_identifier(k) for k in keys)
        # TRY_CAST: a file stored before ingest checked its values holds a bad label as null
        # instead of failing every join.
        select = (
            f"SELECT {columns}, TRY_CAST({LABEL} AS DOUBLE) AS {LABEL}, "
            f"TRY_CAST({known} AS TIMESTAMPTZ) AS label_available_at, {source} AS __source "
            f"FROM {relation}"
        )
        (by_id if by_key else by_entity).append(select)
    return by_id, by_entity


def _entity_on(labels: LabelSpec) -> str:
    """The ON condition matching a label `le` to a logged prediction `p`: same keys, same time."""
    keys = [
        f"json_extract_string(p.entity, {sql_literal('$.' + k)}) = le.{sql_identifier(k)}"
        for k in labels.join_keys
    ]
    column = labels.time_column
    logged = (
        "p.request_time"  # the body's as_of, else when the request arrived
        if labels.time_from == "request"
        else f"TRY_CAST(json_extract_string(p.request, {sql_literal('$.' + column)}) AS TIMESTAMPTZ)"
    )
    when = f"{logged} = TRY_CAST(le.{sql_identifier(column)} AS TIMESTAMPTZ)"
    return " AND ".join([*keys, when])


def _unknown_ids(settings: Settings, name: str, table: pa.Table) -> int:
    if "prediction_id" not in table.column_names:
        return 0
    logged = set(predictions.read_predictions(settings, name)["prediction_id"].to_pylist())
    return sum(1 for pid in table["prediction_id"].to_pylist() if pid not in logged)


def _label_matches(
    labels: LabelSpec, by_id: list[str], by_entity: list[str], avail: str
) -> tuple[list[str], list[str], list[str]]:
    """(CTEs, LEFT JOINs, aliases) matching labels to the logged predictions `p`: one label
    per prediction id, one per entity keys and time, each available by `avail`."""
    ctes: list[str] = []
    joins: list[str] = []
    matched: list[str] = []
    for alias, parts, keys, on in (
        ("lp", by_id, ["prediction_id"], "lp.prediction_id = p.prediction_id"),
        ("le", by_entity, [*labels.join_keys, labels.time_column], _entity_on(labels)),
    ):
        if not parts:
            continue
        distinct = ", ".join(sql_identifier(k) for k in keys)
        ctes.append(
            f"{alias} AS (SELECT DISTINCT ON ({distinct}) * FROM ({' UNION ALL BY NAME '.join(parts)})"
            f" WHERE label_available_at IS NULL OR {avail}"
            f" ORDER BY {distinct}, __source, label_available_at NULLS FIRST)"
        )
        joins.append(f"LEFT JOIN {alias} ON {on}")
        matched.append(alias)
    return ctes, joins, matched


def join_labels(
    settings: Settings,
    name: str,
    as_of: datetime | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Every logged prediction of `name` with its label when known; written to the offline store.

    With `as_of`, a label counts only if it was available by then, and predictions requested at
    or after `as_of` are left out (replays and backtests: the pass sees what existed then).
    One DuckDB statement from the Parquet log to the scored Parquet file: a million logged
    predictions never pass through Python; `columns` reads back only those.
    """
    labels = _spec(settings, name)
    logged = predictions.logged_sql(settings, name)
    con = _con(settings)
    by_id, by_entity = _label_sources(con, settings, name, labels)
    if not by_id and not by_entity:
        raise DataNotLoaded(
            f"no labels ingested for {name!r}.", f"Run `maquette labels ingest {name}`."
        )
    # With as_of, a label counts only once available; of several labels for one prediction
    # (or one entity and time), a file's wins over the declared source's, then the earliest.
    avail = f"label_available_at <= {_instant(as_of)}" if as_of else "TRUE"
    ctes, joins, matched = _label_matches(labels, by_id, by_entity, avail)
    ctes.insert(0, f"p AS ({logged})")

    # Label and availability come from the same match: by prediction id first.
    def chosen(column: str) -> str:
        cases = " ".join(f"WHEN {a}.__source IS NOT NULL THEN {a}.{column}" for a in matched)
        return f"(CASE {cases} END)"

    label_sql, known_sql = chosen(LABEL), chosen("label_available_at")
    # Only request times monitoring can place (see monitored_period), before as_of if given.
    first, last = monitored_period(settings, name)
    last = min(last, as_of) if as_of else last
    requested = f" AND p.request_time >= {_instant(first)} AND p.request_time < {_instant(last)}"
    target = scored_path(settings, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.parquet")
    con.execute(f"""
        COPY (
            WITH {", ".join(ctes)}
            SELECT p.prediction_id, p.request_time, p.logged_at, p.model, p.version,
                   p.partition, p.prediction, p.decision, p.entity, p.request, p.features,
                   p.missing, p.stale, {label_sql}::DOUBLE AS label,
                   {known_sql}::TIMESTAMPTZ AS label_available_at,
                   date_diff('second', p.request_time, {known_sql}::TIMESTAMPTZ) AS label_delay_s
            FROM p {" ".join(joins)}
            WHERE NOT p.shadow{requested}
        ) TO {sql_literal(partial)} (FORMAT parquet)""")
    partial.replace(target)  # readers never see a half-written table
    return pq.read_table(target, columns=columns)
