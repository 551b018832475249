"""The search index: a view of the current version of every resource, one table per parameter type.

R4 §3.1.1 "Search": a search finds current resources, so this view keeps exactly the values of each
resource's latest version. An update deletes the previous version's rows before inserting the new ones
and a delete removes them, in the projector's transaction — an old version's values never match.

Every resource has a key ``sid`` (``search_ids``): the notification id of the event that (re)started it
(its first version, or the version that brought it back after a delete). Keys are deterministic — a
rebuild from zero gives the same rows, however the log is batched — and grow with the log, which gives
search results a stable default order and page cursors a snapshot bound ("nothing newer than sid N").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from projections.changes import Change
from projections.db import Dialect, Tx
from projections.search.dates import MAX, MIN, date_range
from projections.search.extract import FINGERPRINT, Rows, extract
from projections.search.targets import DDL as TARGET_DDL
from projections.search.targets import claim, forget
from projections.search.types import SEARCH_TYPES
from projections.search.writes import insert_rows
from projections.view import View

__all__ = ["VALUE_TABLES", "ResourceKeys", "SearchIndex", "delete_by_sid", "resource_keys"]

#: Parameter type → its table and value columns (each table also has resource_type, param and sid).
VALUE_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    name: (kind.table.name, (*kind.table.columns, *kind.table.filled)) for name, kind in SEARCH_TYPES.items()
}

_CHUNK = 400


#: Per value table, the indexes searches read (none of them is read by the index's own writes).
_LOOKUPS = {kind.table.name: list(kind.table.lookups) for kind in SEARCH_TYPES.values()}


def _column_types(dialect: Dialect) -> dict[str, str]:
    """The ``{text}`` and ``{real}`` of the tables' definitions (:class:`IndexTable`)."""
    if dialect == "postgres":
        return {"text": 'TEXT COLLATE "C"', "real": "DOUBLE PRECISION"}
    return {"text": "TEXT", "real": "REAL"}


def _ddl(dialect: Dialect) -> list[str]:
    text, real = _column_types(dialect).values()
    # SQLite: INTEGER PRIMARY KEY is the rowid itself (no second B-tree), with (resource_type, sid) beside it.
    # PostgreSQL: the key is (resource_type, sid), so a type's resources are read in sid order from one index.
    key = "BIGINT NOT NULL" if dialect == "postgres" else "INTEGER PRIMARY KEY"
    primary = ", PRIMARY KEY (resource_type, sid)" if dialect == "postgres" else ""
    columns = {kind.table.name: kind.table.definition.format(text=text, real=real) for kind in SEARCH_TYPES.values()}
    statements = [
        f"""CREATE TABLE IF NOT EXISTS search_ids (
            sid {key},
            resource_type {text} NOT NULL,
            resource_id {text} NOT NULL,
            last_updated BIGINT NOT NULL{primary})""",
        "CREATE UNIQUE INDEX IF NOT EXISTS search_ids_resource ON search_ids (resource_type, resource_id)",
        "CREATE INDEX IF NOT EXISTS search_ids_updated ON search_ids (resource_type, last_updated)",
    ]
    if dialect == "sqlite":
        statements.append("CREATE INDEX IF NOT EXISTS search_ids_type ON search_ids (resource_type, sid)")
    for table, values in columns.items():
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {table} (resource_type {text} NOT NULL, param {text} NOT NULL, "
            f"{values}, sid BIGINT NOT NULL)"
        )
        statements.append(f"CREATE INDEX IF NOT EXISTS {table}_sid ON {table} (sid)")
    # Per date parameter: the longest finite range (a condition on a range's end becomes an index range
    # on its start, see projections.search.sql._low_bounds) and whether ranges open at the start or at
    # the end were ever indexed. Upper bounds: they only grow.
    statements.append(
        f"CREATE TABLE IF NOT EXISTS search_date_spans (resource_type {text} NOT NULL, param {text} NOT NULL, "
        "max_span BIGINT NOT NULL, open_start INTEGER NOT NULL, open_end INTEGER NOT NULL, "
        "PRIMARY KEY (resource_type, param))"
    )
    for table, indexes in _LOOKUPS.items():
        for number, columns_list in enumerate(indexes):
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {table}_lookup{number} ON {table} (resource_type, param, {columns_list})"
            )
    if dialect == "postgres":
        # A value belongs to one type and parameter ("juarez" is a Patient name, never an Observation
        # code): without multi-column statistics the planner multiplies the three selectivities, guesses
        # a handful of rows where there are thousands, and picks nested loops. 1000 MCV entries cover
        # the common names, codes and reference targets.
        for table, columns_list in _STATISTICS.items():
            statements.append(f"CREATE STATISTICS IF NOT EXISTS {table}_values (mcv) ON {columns_list} FROM {table}")
            statements.append(f"ALTER STATISTICS {table}_values SET STATISTICS 1000")
    return [*statements, *TARGET_DDL]


_STATISTICS = {kind.table.name: kind.table.statistics for kind in SEARCH_TYPES.values()}


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # numbers beyond a double (1e400): the standard parser gives inf
        return json.loads(body)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


#: The tables holding rows of a resource, by its sid.
_ROW_TABLES = ("search_ids", *(table for table, _ in VALUE_TABLES.values()))


class ResourceKeys:
    """The ``sid`` of each resource a batch touches."""

    def __init__(self) -> None:
        #: sid of resources that already had rows before this batch (their rows get replaced).
        self.existing: dict[tuple[str, str], int] = {}
        #: sid of each resource after this batch (absent: deleted).
        self.final: dict[tuple[str, str], int] = {}


def resource_keys(tx: Tx, changes: Sequence[Change]) -> ResourceKeys:
    """Each resource's sid, decided in log order so that any batching gives the same keys.

    Only a resource whose first change in the batch is not its first version can have a key already: a
    batch of creates (a rebuild's, an import's) looks nothing up. Read after :class:`SearchIndex` applied
    the batch (as :class:`projections.search.fulltext.FullTextIndex` does), it gives the same keys: a key
    found is the one the batch ended with, and the batch's own deletes and re-creations lead to it again.
    """
    keys = ResourceKeys()
    unknown: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    for change in changes:
        key = (change.resource_type, change.resource_id)
        if key not in seen and change.version > 1:
            unknown.setdefault(change.resource_type, []).append(change.resource_id)
        seen.add(key)
    for resource_type, ids in unknown.items():
        for sid, resource_id in _lookup(tx, resource_type, ids):
            keys.existing[(resource_type, str(resource_id))] = int(sid)
    current: dict[tuple[str, str], int | None] = dict(keys.existing)
    for change in changes:
        key = (change.resource_type, change.resource_id)
        if change.deleted:
            current[key] = None
        elif current.get(key) is None:
            current[key] = change.notification_id
    keys.final = {key: sid for key, sid in current.items() if sid is not None}
    return keys


def _lookup(tx: Tx, resource_type: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """(sid, resource_id) of those of ``ids`` that have a key.

    PostgreSQL: one statement text whatever the count (one prepared statement, where ``IN`` with a mark
    per id prepares a new one per length), on the unique index ``search_ids_resource`` with both columns
    bound (``= ANY`` is an index condition): no plan that depends on statistics, which a rebuild's fresh
    tables never have (autovacuum may be off)."""
    if tx.dialect == "postgres":
        return list(
            tx.execute(
                "SELECT sid, resource_id FROM search_ids WHERE resource_type = ? AND resource_id = ANY(?)",
                (resource_type, list(ids)),
            ).fetchall()
        )
    found: list[tuple[Any, ...]] = []
    for chunk in _chunks(ids):
        marks = ", ".join("?" * len(chunk))
        found += tx.execute(
            f"SELECT sid, resource_id FROM search_ids WHERE resource_type = ? AND resource_id IN ({marks})",
            (resource_type, *chunk),
        ).fetchall()
    return found


class SearchIndex(View):
    # search_date_spans and search_registry last: rebuilt and swapped with the rows they describe (``ehr rebuild``).
    tables = (*_ROW_TABLES, "search_date_spans", "search_registry")
    query_indexes = (
        "search_ids_updated",
        *(f"{table}_lookup{n}" for table, indexes in _LOOKUPS.items() for n in range(len(indexes))),
    )

    def create(self, tx: Tx, dialect: Dialect) -> None:
        _drop_unkeyed_composites(tx, dialect)
        _add_columns(tx, dialect)
        for statement in _ddl(dialect):
            tx.execute(statement)
        # The registry fingerprint (projections/search/extract.py) the rows were built with. An empty index
        # is current whatever the registry; an index built before fingerprints were recorded is not known to be.
        tx.execute("CREATE TABLE IF NOT EXISTS search_registry (fingerprint TEXT NOT NULL)")
        if tx.execute("SELECT 1 FROM search_registry").fetchone() is None:
            empty = tx.execute("SELECT 1 FROM search_ids LIMIT 1").fetchone() is None
            tx.execute("INSERT INTO search_registry (fingerprint) VALUES (?)", (FINGERPRINT if empty else "",))

    def reset(self, tx: Tx) -> None:
        super().reset(tx)
        tx.execute("INSERT INTO search_registry (fingerprint) VALUES (?)", (FINGERPRINT,))  # empty: current

    def dump(self, tx: Tx) -> dict[str, list[tuple[Any, ...]]]:
        """The rows of the resources (the registry they were indexed with is not one of them)."""
        rows = super().dump(tx)
        del rows["search_registry"]
        return rows

    # -- the registry the rows were built with -------------------------------------------------------

    @staticmethod
    def fingerprint(tx: Tx) -> str:
        """The fingerprint of the registry the rows were built with ("": unknown, built before it was kept)."""
        row = tx.execute("SELECT fingerprint FROM search_registry").fetchone()
        return str(row[0]) if row else ""

    @staticmethod
    def mark_current(tx: Tx) -> None:
        tx.execute("UPDATE search_registry SET fingerprint = ?", (FINGERPRINT,))

    def reindex_batch(self, tx: Tx, dialect: Dialect, after: int, limit: int) -> tuple[int, int]:
        """Index again, with this registry, the next ``limit`` resources by sid after ``after``, from the
        current resources' view (their stored bodies: no log replay); (resources done, last sid)."""
        # search_ids' text columns are COLLATE "C" on PostgreSQL, the resources view's are not: compare as one.
        kind = 'CAST(s.resource_type AS TEXT) COLLATE "default"' if dialect == "postgres" else "s.resource_type"
        key = 'CAST(s.resource_id AS TEXT) COLLATE "default"' if dialect == "postgres" else "s.resource_id"
        rows = tx.execute(
            f"SELECT s.sid, s.resource_type, s.resource_id, r.body FROM search_ids s JOIN resources r "
            f"ON r.resource_type = {kind} AND r.resource_id = {key} WHERE s.sid > ? ORDER BY s.sid LIMIT ?",
            (after, limit),
        ).fetchall()
        if not rows:
            return 0, after
        self._delete(tx, {(str(t), str(i)): int(sid) for sid, t, i, _ in rows}, _ROW_TABLES[1:])
        self._insert_values(tx, [(int(sid), str(t), bytes(body)) for sid, t, _, body in rows if body is not None])
        return len(rows), int(rows[-1][0])

    def apply(self, tx: Tx, changes: Sequence[Change]) -> None:
        keys = resource_keys(tx, changes)
        latest: dict[tuple[str, str], Change] = {}
        for change in changes:
            latest[(change.resource_type, change.resource_id)] = change
        self._delete(tx, keys.existing, _ROW_TABLES)
        # A key gone (deleted, or re-created under a new key) is no reference's target any more.
        forget(tx, [sid for key, sid in keys.existing.items() if keys.final.get(key) != sid])
        inserts: list[tuple[int, Change]] = []
        for key, change in latest.items():
            sid = keys.final.get(key)
            if sid is not None and not change.deleted:
                inserts.append((sid, change))
        created = [(kind, rid, sid) for (kind, rid), sid in keys.final.items() if keys.existing.get((kind, rid)) != sid]
        self._insert(tx, inserts, created, keys.final)

    # -- rows --------------------------------------------------------------------------------------

    def _delete(self, tx: Tx, existing: dict[tuple[str, str], int], tables: Sequence[str]) -> None:
        """Remove every row of these resources from ``tables`` (their previous version's values)."""
        by_type: dict[str, list[int]] = {}
        for (resource_type, _), sid in existing.items():
            by_type.setdefault(resource_type, []).append(sid)
        for resource_type, sids in by_type.items():
            for chunk in _chunks(sids):
                for table in tables:
                    tx.execute(delete_by_sid(table, len(chunk)), [*chunk, resource_type])

    @staticmethod
    def _spans(tx: Tx, updates: list[tuple[str, str, int, int, int]]) -> None:
        if updates:
            grown = " ".join(
                f"{column} = CASE WHEN excluded.{column} > search_date_spans.{column} THEN excluded.{column} "
                f"ELSE search_date_spans.{column} END{',' if column != 'open_end' else ''}"
                for column in ("max_span", "open_start", "open_end")
            )
            tx.executemany(
                "INSERT INTO search_date_spans (resource_type, param, max_span, open_start, open_end) "
                f"VALUES (?, ?, ?, ?, ?) ON CONFLICT (resource_type, param) DO UPDATE SET {grown}",
                updates,
            )

    def _insert(
        self,
        tx: Tx,
        inserts: list[tuple[int, Change]],
        created: list[tuple[str, str, int]],
        known: dict[tuple[str, str], int],
    ) -> None:
        ids: list[tuple[Any, ...]] = []
        bodies: list[tuple[int, str, bytes]] = []
        for sid, change in inserts:
            assert change.body is not None
            ids.append((sid, change.resource_type, change.resource_id, date_range(change.last_updated)[0]))
            bodies.append((sid, change.resource_type, change.body))
        self._insert_values(tx, bodies, ids, created, known)

    def _insert_values(
        self,
        tx: Tx,
        bodies: list[tuple[int, str, bytes]],
        ids: Sequence[tuple[Any, ...]] = (),
        created: Sequence[tuple[str, str, int]] = (),
        known: dict[tuple[str, str], int] | None = None,
    ) -> None:
        """The key rows ``ids`` and the value rows of each (sid, type, stored body); the references waiting
        for the ``created`` resources (type, id, key) get their keys (projections/search/targets.py). ``known``:
        the key of every resource of the batch, whose key rows are not in search_ids at this point (an
        update's were deleted with its other rows)."""
        values: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in VALUE_TABLES}
        known = known or {}
        for sid, resource_type, body in bodies:
            rows = extract(_loads(body))
            for kind in VALUE_TABLES:
                found = getattr(rows, kind)
                if found:
                    values[kind] += [(resource_type, *_bounded(kind, row), sid) for row in found]
        spans = _span_updates(values["date"])
        values["reference"] = [
            (*row[:-1], known.get((row[2], row[3])) if row[2] is not None else None, row[-1])
            for row in values["reference"]
        ]
        if insert_rows(tx, ids, values, spans, created):
            return
        values["reference"] = _target_keys(tx, values["reference"])
        if ids:
            tx.insert("search_ids", ("sid", "resource_type", "resource_id", "last_updated"), ids)
        self._spans(tx, spans)
        for kind, (table, columns) in VALUE_TABLES.items():
            tx.insert(table, ("resource_type", "param", *columns, "sid"), values[kind])
        claim(tx, created)


def _target_keys(tx: Tx, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Reference rows ``(type, param, target_type, target_id, base, target_sid, sid)`` whose target key is
    not given yet, with it looked up in ``search_ids`` (one statement per target type; projections/search/
    targets.py). Rows are written before the batch's key rows: a target the batch creates is given already."""
    wanted: dict[str, set[str]] = {}
    for _, _, kind, resource_id, _, target_sid, _ in rows:
        if kind is not None and target_sid is None:
            wanted.setdefault(kind, set()).add(resource_id)
    if not wanted:
        return rows
    found: dict[tuple[str, str], int] = {}
    for kind, ids in wanted.items():
        found.update(((kind, str(rid)), int(sid)) for sid, rid in _lookup(tx, kind, sorted(ids)))
    return [(*row[:5], found.get((row[2], row[3])), row[6]) if row[5] is None else row for row in rows]


def delete_by_sid(table: str, count: int) -> str:
    """The delete of ``count`` resources' rows of one type from ``table``, by sid.

    search_ids is keyed (resource_type, sid): the type leads its key. A value table's only index on sid is
    ``<table>_sid``, but its lookup indexes also lead with resource_type: without statistics (a store never
    analysed; autovacuum may be off) PostgreSQL ANDs the sid index with a scan of *every* row of the type in a
    lookup index (measured 8 ms instead of 0.04 ms at 230,000 rows, per table and update). Comparing
    ``resource_type || ''`` keeps the condition but out of any index: the plan is the sid index whatever the
    statistics."""
    kind = "resource_type = ?" if table == "search_ids" else "resource_type || '' = ?"
    return f"DELETE FROM {table} WHERE sid IN ({', '.join('?' * count)}) AND {kind}"


def _bounded(kind: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row with each value a b-tree index holds cut to a bounded prefix (PostgreSQL refuses index rows
    over ~2,700 bytes, see projections/indexed.py); each type's table says which of its values are."""
    if kind == "composite":
        return row  # bounded per component type when extracted
    return SEARCH_TYPES[kind].table.bound(row)


#: Columns added after stores were created with these tables. The canonical UCUM value of a quantity
#: (types/quantity.py). Old rows keep them NULL (found by their own unit only) until ``ehr rebuild``.
_ADDED_COLUMNS: dict[str, dict[str, str]] = {
    table: {"canonical": "{text}", "canonical_low": "{real}", "canonical_high": "{real}"}
    for table in ("search_quantity", "search_composite")
}
#: And a reference's target key (projections/search/targets.py): NULL in old rows until the re-index that the
#: extraction version (extract.py) starts fills it.
_ADDED_COLUMNS["search_reference"] = {"target_sid": "BIGINT"}


def _columns_of(tx: Tx, dialect: Dialect, table: str) -> set[str]:
    """The columns of ``table`` (empty: no such table)."""
    if dialect == "postgres":
        rows = tx.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(?) AND attnum > 0 AND NOT attisdropped",
            (table,),
        ).fetchall()
    else:
        rows = [(row[1],) for row in tx.execute(f"PRAGMA table_info({table})").fetchall()]
    return {str(row[0]) for row in rows}


def _drop_unkeyed_composites(tx: Tx, dialect: Dialect) -> None:
    """A ``search_composite`` of the layout before composites had keys (a row per component value, no
    ``token_code``; types/composite.py) is dropped, its indexes with it, to be created anew: its rows cannot
    answer the keyed searches, and the extraction version those rows were built with (extract.py) makes the
    server index every stored resource again (reindex.py)."""
    present = _columns_of(tx, dialect, "search_composite")
    if present and "token_code" not in present:
        tx.execute("DROP TABLE search_composite")


def _add_columns(tx: Tx, dialect: Dialect) -> None:
    types = _column_types(dialect)
    for table, added in _ADDED_COLUMNS.items():
        if dialect == "postgres":
            found = tx.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone()
            if found and found[0]:
                for column, kind in added.items():
                    tx.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind.format(**types)}")
            continue
        present = {str(row[1]) for row in tx.execute(f"PRAGMA table_info({table})").fetchall()}
        for column, kind in added.items():
            if present and column not in present:
                tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind.format(**types)}")


def _span_updates(date_rows: list[tuple[Any, ...]]) -> list[tuple[str, str, int, int, int]]:
    """(resource_type, param, longest finite span, any open start, any open end) of a batch's date rows."""
    spans: dict[tuple[str, str], tuple[int, int, int]] = {}
    for resource_type, param, low, high, _ in date_rows:
        key = (resource_type, param)
        span, open_start, open_end = spans.get(key, (0, 0, 0))
        if low != MIN and high != MAX:
            span = max(span, high - low)
        spans[key] = (span, max(open_start, int(low == MIN)), max(open_end, int(high == MAX)))
    return [(resource_type, param, *found) for (resource_type, param), found in spans.items()]


def rows_of(resource: dict[str, Any]) -> Rows:
    """The rows :class:`SearchIndex` writes for ``resource`` (for tests and the benchmark's bulk load)."""
    return extract(resource)
