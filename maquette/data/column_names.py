"""Column names checked the way Feast and pandas read them: exactly, where DuckDB ignores case.

DuckDB matches identifiers case-insensitively and quietly renames the second of two columns
equal but for case (`Blackhawks_Home`, `blackhawks_home_1`); a query naming `blackhawks_home`
over a column `Blackhawks_Home` returns it spelt `Blackhawks_Home`. Feast and pandas then look
for the declared spelling and fail much later (a KeyError in `monitor run`). So every table is
checked when it is loaded, and every Feast view against its table when it is applied:

- `refuse_case_clashes`: a table with two columns equal but for case;
- `misspelt_columns`: declared names whose table holds them only under another case;
- `write_declared_columns` / `refuse_misspelt_declared_columns`: what `features apply` declared
  for each table, kept beside the Feast registry so `data load` can check a feature SQL's
  output without importing Feast (seconds of start-up).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from maquette.config import Settings
from maquette.errors import DataError

# (feature view, column name) pairs a table must hold, by the table's resolved path.
DeclaredColumns = Mapping[Path, Sequence[tuple[str, str]]]

_WHY = "DuckDB treats names equal but for case as one column; Feast and pandas do not."


def case_clashes(names: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of names that are equal but for case, in the order they appear."""
    first: dict[str, str] = {}
    clashes = []
    for name in names:
        seen = first.setdefault(name.lower(), name)
        if seen != name:
            clashes.append((seen, name))
    return clashes


def refuse_case_clashes(what: str, names: Iterable[str], where: str) -> None:
    """DataError if `what` (e.g. "source 'games'") has two columns equal but for case."""
    clashes = case_clashes(names)
    if clashes:
        a, b = clashes[0]
        raise DataError(
            f"{what} has the columns {a!r} and {b!r}, equal but for case.",
            f"Rename one of them in {where}. {_WHY}",
        )


def misspelt_columns(declared: Iterable[str], names: Iterable[str]) -> list[tuple[str, str]]:
    """(declared, found) pairs: a declared name the table holds only under another case."""
    present = set(names)
    by_lower = {n.lower(): n for n in present}
    return [
        (name, by_lower[name.lower()])
        for name in declared
        if name not in present and name.lower() in by_lower
    ]


def declared_columns_path(settings: Settings) -> Path:
    """Where `features apply` records the columns each Feast view needs from its table."""
    return settings.registry_path.with_name("declared_columns.json")


def write_declared_columns(settings: Settings, declared: DeclaredColumns) -> None:
    """Record, beside the Feast registry, the (view, column) pairs each table must hold."""
    path = declared_columns_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {str(table): [list(pair) for pair in pairs] for table, pairs in declared.items()}
    path.write_text(json.dumps(document, indent=2, sort_keys=True))


def _declared_for(settings: Settings, table_path: Path) -> list[tuple[str, str]]:
    record = declared_columns_path(settings)
    # Only while a registry exists: without one nothing is declared any more.
    if not (settings.registry_path.is_file() and record.is_file()):
        return []
    # A feature repo edited since the last apply may rename the field along with the column;
    # the next `features apply` checks it, so an old record must not block this load.
    recorded = record.stat().st_mtime
    if any(f.stat().st_mtime > recorded for f in settings.feature_repo.glob("*.py")):
        return []
    document = json.loads(record.read_text())
    return [(view, column) for view, column in document.get(str(table_path.resolve()), [])]


def refuse_misspelt_declared_columns(
    settings: Settings, what: str, table_path: Path, names: Sequence[str], where: str
) -> None:
    """DataError if a Feast view applied over `table_path` spells one of its columns otherwise."""
    pairs = _declared_for(settings, table_path)
    for view, column in pairs:
        for wanted, found in misspelt_columns([column], names):
            raise DataError(
                f"{what} has the column {found!r} where the Feast view {view!r} declares "
                f"{wanted!r}.",
                f"Spell them the same: rename the column in {where} (e.g. "
                f'`"{found}" AS {wanted}`) or the field in the feature repo. {_WHY}',
            )


def refuse_view_case_mismatches(declared: DeclaredColumns) -> None:
    """DataError if a view declares a column its (loaded) table holds only under another case."""
    for table, pairs in declared.items():
        if not table.is_file():
            continue  # not loaded yet: `data load` checks it against this record instead
        names = pq.read_schema(table).names
        for view, column in pairs:
            for wanted, found in misspelt_columns([column], names):
                raise DataError(
                    f"the Feast view {view!r} declares {wanted!r} but its table {table} has "
                    f"{found!r}.",
                    f"Spell them the same: rename the field in the feature repo, or the column "
                    f'where the table is made (e.g. `"{found}" AS {wanted}` in its SQL). {_WHY}',
                )
