"""Running a search: the page of matches, its cursors, the total and the included resources.

Paging (R4 §3.1.1.6 "Paging", §3.1.1.8 "Sorting"): results are ordered by the ``_sort`` keys, then by
the resource's index key ``sid``; a page cursor carries the last row's keys (keyset paging, never an
offset) and a snapshot bound — the highest ``sid`` when the first page was read — so resources created
while a client pages do not slide into later pages, and no resource is seen twice or skipped.

Access: given a :class:`projections.access.Viewer`, the policy's SQL predicate joins the where
clause of the matches, of the total and of every ``_include``/``_revinclude`` round, so what the caller may
not see is neither listed, nor counted, nor followed, nor reachable through a page cursor.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ehr_core.errors import InvalidResource, Issue
from projections.access import Viewer, consents_lookup, institution_clause, visible_clause, with_consents
from projections.db import Dialect, Tx
from projections.indexed import indexed
from projections.search.chains import chain_keys
from projections.search.dates import MAX, MIN
from projections.search.fold import TOP
from projections.search.index import VALUE_TABLES
from projections.search.keysets import (
    KeySets,
    Walk,
    driven_page,
    intersectable,
    intersected_count,
    intersected_page,
    key_sets,
    lone_set,
    probe,
    probe_bound,
    probed,
)
from projections.search.query import (
    ChainFilter,
    Filter,
    HasFilter,
    Include,
    SameValueFilter,
    SearchRequest,
    SortKey,
    ValueFilter,
    merge_same_value,
)
from projections.search.special import SpecialFilter
from projections.search.sql import Condition, Context, condition, read_spans
from projections.terminology.codes import TerminologyCodes

__all__ = [
    "MAX_INCLUDES",
    "Match",
    "Page",
    "identifier_probe",
    "indexed_types",
    "run_search",
    "select_among",
    "select_by_identifier",
    "select_ids",
]

#: Included resources per page, at most (R4 lets a server limit them; the Bundle says so).
MAX_INCLUDES = 1000
_ITERATE_ROUNDS = 4


@dataclass(frozen=True)
class Match:
    resource_type: str
    resource_id: str
    sid: int


@dataclass
class Page:
    matches: list[Match]
    includes: list[Match] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    prev_cursor: str | None = None
    #: True when :data:`MAX_INCLUDES` cut the included resources short.
    includes_truncated: bool = False
    #: The viewer broke the glass and this page holds resources only that lifted the rule for.
    break_glass_used: bool = False
    #: The access policy restricted the search (the caller is not entitled to everything).
    filtered: bool = False


def _columns(alias: str, dialect: Dialect) -> tuple[str, str]:
    """``search_ids``' type and id columns as the policy's tables compare them. On PostgreSQL the index's
    text is ``COLLATE "C"`` and the policy's tables use the default collation: without the cast their
    primary keys could not serve the per-row look-ups (measured: 40 s instead of milliseconds)."""
    if dialect == "postgres":
        return f'({alias}.resource_type COLLATE "default")', f'({alias}.resource_id COLLATE "default")'
    return f"{alias}.resource_type", f"{alias}.resource_id"


def _visible(viewer: Viewer | None, alias: str, dialect: Dialect) -> Condition | None:
    """The access policy for rows of ``search_ids`` aliased ``alias`` (None: no policy, auth is off)."""
    if viewer is None:
        return None
    sql, params = visible_clause(viewer, *_columns(alias, dialect))
    return Condition(sql, params)


def _policy(viewer: Viewer, dialect: Dialect) -> Callable[[str], Condition]:
    """The access policy for any ``search_ids`` alias (the resources a chain or ``_has`` passes through)."""

    def visible(alias: str) -> Condition:
        sql, params = visible_clause(viewer, *_columns(alias, dialect))
        return Condition(sql, params)

    return visible


# -- where clause -----------------------------------------------------------------------------------


def _where(
    tx: Tx,
    request: SearchRequest,
    base: str | None,
    snapshot: int | None,
    visible: Condition | None = None,
    policy: Callable[[str], Condition] | None = None,
    dialect: Dialect = "sqlite",
) -> KeySets:
    parts: list[tuple[Condition, Filter | None, Walk | None]] = [
        (Condition("a.resource_type = ?", [request.resource_type]), None, None)
    ]
    if request.compartment is not None:
        parts.append(
            (
                Condition(
                    "EXISTS (SELECT 1 FROM resource_compartments c WHERE c.patient_id = ? AND c.resource_type = ? "
                    "AND c.resource_id = a.resource_id)",
                    [request.compartment, request.resource_type],
                ),
                None,
                None,
            )
        )
    if visible is not None:
        parts.append((visible, None, None))
    if snapshot is not None:
        parts.append((Condition("a.sid <= ?", [snapshot]), None, None))
    filters = merge_same_value(request.filters)
    spans = read_spans(tx) if any(_has_dates(item) for item in filters) else None
    context = Context(spans, policy, dialect, TerminologyCodes(tx))
    for item in filters:
        # A chain's keys read from its targets outward (chains.py): counted and fetched by the probe, they may
        # drive the page (PostgreSQL only: the page queries that use them are lateral joins).
        walk = chain_keys(item, base, context) if isinstance(item, ChainFilter) and dialect == "postgres" else None
        parts.append((condition(item, "a", base, context), item if _drives(item) else None, walk))
    return key_sets(parts, "a")


def _drives(item: Filter) -> bool:
    """Whether a page is driven from ``item``'s keys when they are the search's only set (keysets.py).
    Full-text matches come in no key order. A keyed composite's come in key order from one index range
    (types/composite.py), but as a semi-join, on a store never analysed (autovacuum may be off), PostgreSQL
    guesses one match, collects every match, looks each up in ``search_ids`` and sorts them (measured at
    200,000 resources: 650 ms for 20,000 matches); driven, the range is read in key order until the page is
    full, whatever the statistics."""
    if isinstance(item, SpecialFilter):
        return item.unordered
    return isinstance(item, ValueFilter) and item.param.type == "composite"


def _has_dates(item: Filter) -> bool:
    """Whether ``item`` (or a chain inside it) has a date condition on the index's date table."""
    if isinstance(item, ChainFilter):
        return any(_has_dates(inner) for _, inner in item.inner)
    if isinstance(item, HasFilter):
        return _has_dates(item.inner)
    if isinstance(item, SpecialFilter):
        return item.dates
    return isinstance(item, ValueFilter | SameValueFilter) and item.param.type == "date"


def select_ids(
    tx: Tx,
    request: SearchRequest,
    base: str | None,
    limit: int,
    viewer: Viewer | None = None,
    dialect: Dialect = "sqlite",
) -> list[str]:
    """Ids of the first ``limit`` matches in index order (what conditional interactions need), among the
    resources ``viewer`` may see (every resource when ``viewer`` is None)."""
    viewer = with_consents(tx, viewer) if viewer is not None else None
    policy = None if viewer is None else _policy(viewer, dialect)
    where = _where(tx, request, base, None, _visible(viewer, "a", dialect), policy, dialect).where
    rows = tx.execute(
        f"SELECT a.resource_id FROM search_ids a WHERE {where.sql} ORDER BY a.sid LIMIT ?", [*where.params, limit]
    ).fetchall()
    return [str(row[0]) for row in rows]


#: Identifiers probed by one statement of :func:`select_by_identifier` at most (its parameters stay far below
#: SQLite's 32,766 and PostgreSQL's 65,535 per statement).
_IDENTIFIERS_PER_STATEMENT = 500


def identifier_probe(request: SearchRequest) -> tuple[str, str, str] | None:
    """``(resource type, system, value)`` when ``request`` is one identifier token equality with a system
    (``Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999``, what Synthea's conditional references
    and ``ifNoneExist`` ask): one range of the token index, which :func:`select_by_identifier` reads for many
    such requests at once. None for any other search (modifiers, several values, no system or value...)."""
    if len(request.filters) != 1 or request.compartment is not None:
        return None
    item = request.filters[0]
    if not isinstance(item, ValueFilter) or item.param.code != "identifier" or item.param.type != "token":
        return None
    if item.param.resource_type != request.resource_type:
        return None
    if item.modifier is not None or len(item.values) != 1:
        return None
    value = item.values[0]
    if not getattr(value, "system", None) or not getattr(value, "code", None):
        return None
    return item.param.resource_type, str(value.system), str(value.code)


def select_by_identifier(
    tx: Tx,
    probes: Sequence[tuple[str, str, str]],
    limit: int,
    viewer: Viewer | None = None,
    dialect: Dialect = "sqlite",
) -> list[list[str]]:
    """:func:`select_ids` of each identifier probe (:func:`identifier_probe`), in one statement per 500.

    The same rows as each search alone: the token rows equal to the (bounded, ``indexed``) system and value
    of the type's ``identifier``, their resources in ``search_ids`` among those ``viewer`` may see, the first
    ``limit`` in index order. The probes are a ``VALUES`` list joined to the token index (one index range
    each): not a ``UNION`` of the searches, which PostgreSQL takes longer to plan (measured 380 ms for 100)
    than to run."""
    viewer = with_consents(tx, viewer) if viewer is not None else None
    visible = _visible(viewer, "a", dialect)
    policy = f" AND {visible.sql}" if visible is not None else ""
    found: list[list[str]] = [[] for _ in probes]
    for start in range(0, len(probes), _IDENTIFIERS_PER_STATEMENT):
        group = probes[start : start + _IDENTIFIERS_PER_STATEMENT]
        values = ", ".join("(?, ?, ?, ?)" for _ in group)
        params: list[Any] = []
        for number, (resource_type, system, value) in enumerate(group, start):
            params += [number, resource_type, indexed(system), indexed(value)]
        rows = tx.execute(
            f"WITH p(q, rt, system, code) AS (VALUES {values}) "
            "SELECT q, sid, resource_id FROM (SELECT m.q, m.sid, m.resource_id, "
            "ROW_NUMBER() OVER (PARTITION BY m.q ORDER BY m.sid) AS n FROM (SELECT DISTINCT p.q, a.sid, a.resource_id "
            "FROM p JOIN search_token t ON t.resource_type = p.rt AND t.param = 'identifier' AND t.code = p.code "
            "AND t.system = p.system JOIN search_ids a ON a.resource_type = p.rt AND a.sid = t.sid"
            f"{policy}) m) r WHERE n <= ?",
            [*params, *(visible.params if visible is not None else []), limit],
        ).fetchall()
        for number, _sid, resource_id in sorted(rows, key=lambda row: (int(row[0]), int(row[1]))):
            found[int(number)].append(str(resource_id))
    return found


def select_among(
    tx: Tx,
    request: SearchRequest,
    ids: Sequence[str],
    viewer: Viewer | None = None,
    dialect: Dialect = "sqlite",
) -> set[str]:
    """Which of ``ids`` (resources of ``request.resource_type`` already chosen, e.g. one page of a Bulk Data
    export) match ``request``: the same conditions as a search, on those resources only."""
    if not ids:
        return set()
    viewer = with_consents(tx, viewer) if viewer is not None else None
    policy = None if viewer is None else _policy(viewer, dialect)
    where = _where(tx, request, None, None, _visible(viewer, "a", dialect), policy, dialect).where
    marks = ", ".join("?" * len(ids))
    rows = tx.execute(
        f"SELECT a.resource_id FROM search_ids a WHERE {where.sql} AND a.resource_id IN ({marks})",
        [*where.params, *ids],
    ).fetchall()
    return {str(row[0]) for row in rows}


# -- sorting ----------------------------------------------------------------------------------------

_SORT_COLUMN = {
    "token": ("code", "code"),
    "string": ("value", "value"),
    "date": ("low", "high"),
    "number": ("low", "high"),
    "quantity": ("low", "high"),
    "reference": ("target_id", "target_id"),
    "uri": ("value", "value"),
}


def _missing_last(key: SortKey) -> Any:
    """What a resource without a value sorts as: after every value, in either direction."""
    kind = key.param.type
    if key.param.code == "_lastUpdated" or kind == "date":
        return MIN - 1 if key.descending else MAX + 1
    if kind in ("number", "quantity"):
        return -1.0e308 if key.descending else 1.0e308
    return "" if key.descending else TOP


def _sort_expression(key: SortKey) -> Condition:
    param = key.param
    if param.code == "_id":
        return Condition("a.resource_id")
    if param.code == "_lastUpdated":
        return Condition("a.last_updated")
    table = VALUE_TABLES[param.type][0]
    ascending_column, descending_column = _SORT_COLUMN[param.type]
    aggregate = f"MAX({descending_column})" if key.descending else f"MIN({ascending_column})"
    return Condition(
        f"COALESCE((SELECT {aggregate} FROM {table} x WHERE x.sid = a.sid AND x.resource_type = ? AND x.param = ?), ?)",
        [param.resource_type, param.code, _missing_last(key)],
    )


def _keyset(sort: Sequence[SortKey], after: list[Any], backwards: bool) -> Condition:
    """Rows strictly after ``after`` (sort values, then sid) in the order (reversed when ``backwards``)."""
    columns = [f"q.k{n}" for n in range(len(sort))] + ["q.sid"]
    ascending = [not key.descending for key in sort] + [True]
    ors, params = [], []
    for level in range(len(columns)):
        terms, level_params = [], []
        for equal in range(level):
            terms.append(f"{columns[equal]} = ?")
            level_params.append(after[equal])
        forward = ascending[level] != backwards
        terms.append(f"{columns[level]} {'>' if forward else '<'} ?")
        level_params.append(after[level])
        ors.append("(" + " AND ".join(terms) + ")")
        params += level_params
    return Condition(" OR ".join(ors), params)


# -- cursors ----------------------------------------------------------------------------------------


def _encode(direction: str, snapshot: int, keys: list[Any]) -> str:
    payload = orjson.dumps({"d": direction, "m": snapshot, "k": keys})
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


_INT64 = 2**63 - 1
#: Far longer than any cursor this server hands out (a few sort values and two numbers).
_CURSOR_CHARS = 4096


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value <= _INT64


def _fits(value: Any, key: SortKey) -> bool:
    """Whether ``value`` can be a sort value of ``key``: the type its sort expression has (see
    :func:`_missing_last`), within what the database can bind, so a forged cursor never reaches SQL."""
    if key.param.code == "_id":
        return isinstance(value, str)
    expected = _missing_last(key)
    if isinstance(expected, int):
        return _is_int(value)
    if isinstance(expected, float):
        return _is_int(value) or (isinstance(value, float) and math.isfinite(value))
    return isinstance(value, str)


def _decode(cursor: str, sort: Sequence[SortKey]) -> tuple[str, int, list[Any]]:
    """The cursor a client sent back. It is the client's to alter, so every part is checked before use:
    a bad one is the client's error (400), never a failed query."""
    try:
        if len(cursor) > _CURSOR_CHARS:
            raise ValueError("too long")
        payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        direction, snapshot, keys = payload["d"], payload["m"], payload["k"]
        valid = (
            direction in ("n", "p")
            and _is_int(snapshot)
            and isinstance(keys, list)
            and len(keys) == len(sort) + 1
            and _is_int(keys[-1])
            and all(_fits(value, key) for value, key in zip(keys, sort, strict=False))
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidResource([Issue("invalid", "invalid or expired page cursor; start the search again", "_cursor")])
    return direction, snapshot, keys


# -- the page ---------------------------------------------------------------------------------------


def indexed_types(tx: Tx) -> list[str]:
    """The resource types that have something in the search index (a system search without ``_type``)."""
    # A loose index scan (one index probe per type): DISTINCT would read every row of the index.
    rows = tx.execute(
        "WITH RECURSIVE t(rt) AS (SELECT MIN(resource_type) FROM search_ids UNION ALL "
        "SELECT (SELECT MIN(s.resource_type) FROM search_ids s WHERE s.resource_type > t.rt) FROM t "
        "WHERE t.rt IS NOT NULL) SELECT rt FROM t WHERE rt IS NOT NULL"
    ).fetchall()
    return sorted(str(row[0]) for row in rows)


def _snapshot(tx: Tx, resource_type: str, viewer: Viewer | None) -> tuple[int, Viewer | None]:
    """The newest key of ``resource_type`` (what bounds the pages after the first) and ``viewer`` knowing
    whether its institution holds a valid consent (``with_consents``): every first page asks both, in one
    statement of two index reads whose plans never depend on the values, so it is kept."""
    lookup = None if viewer is None else consents_lookup(viewer)
    sql, params = "SELECT (SELECT MAX(sid) FROM search_ids WHERE resource_type = ?)", [resource_type]
    if lookup is not None:
        sql, params = f"{sql}, {lookup[0]}", [*params, *lookup[1]]
    row = tx.reusing_plans().execute(sql, params).fetchone()
    snapshot = int(row[0]) if row and row[0] is not None else 0
    if viewer is not None and lookup is not None:
        viewer = replace(viewer, consents=row is not None and row[1] is not None)
    return snapshot, viewer


def _page_rows(
    tx: Tx, request: SearchRequest, sets: KeySets, limit: int, after: list[Any] | None, backwards: bool
) -> list[tuple[Any, ...]]:
    sort, where = request.sort, sets.where
    if not sort and sets.keys is not None and tx.dialect == "postgres":
        # Full-text matches come out of a GIN bitmap in no key order (keysets.py), unless the filter reads
        # them in key order itself (_text: projections.search.narrative); SQLite has no LATERAL.
        bound = None if after is None else int(after[-1])
        driven = (
            sets.driver.ordered_page(sets.rest, bound, backwards, limit)
            if isinstance(sets.driver, SpecialFilter)
            else None
        )
        if driven is None:
            driven = driven_page(sets, bound, backwards, limit)
        return tx.execute(driven.sql, driven.params).fetchall()
    if not sort and tx.dialect == "postgres" and intersectable(sets):
        # Several sets of keys: driven from the smallest, as counted (keysets.py), not as estimated.
        counts = _counts(tx, sets)
        if 0 in counts:
            return []  # a set without keys: nothing matches (the counts read no policy, snapshot or cursor)
        after_key = None if after is None else int(after[-1])
        page = intersected_page(sets, counts, after_key, backwards, limit, probe_bound(sets))
        if page is not None:
            return _planned_once(tx, sets).execute(page.sql, page.params).fetchall()
    if not sort:
        # The fast path: index order, keyset on sid alone.
        clause, params = where.sql, list(where.params)
        if after is not None:
            clause += f" AND a.sid {'<' if backwards else '>'} ?"
            params.append(after[-1])
        order = "DESC" if backwards else "ASC"
        return tx.execute(
            f"SELECT a.sid, a.resource_id FROM search_ids a WHERE {clause} ORDER BY a.sid {order} LIMIT ?",
            [*params, limit],
        ).fetchall()
    expressions = [_sort_expression(key) for key in sort]
    select = ", ".join(f"{e.sql} AS k{n}" for n, e in enumerate(expressions))
    params = [p for e in expressions for p in e.params] + list(where.params)
    inner = f"SELECT a.sid, a.resource_id, {select} FROM search_ids a WHERE {where.sql}"
    outer_where = ""
    if after is not None:
        keyset = _keyset(sort, after, backwards)
        outer_where = f" WHERE {keyset.sql}"
        params += keyset.params
    directions = [(key.descending != backwards) for key in sort]
    order = ", ".join(f"q.k{n} {'DESC' if d else 'ASC'}" for n, d in enumerate(directions))
    order += f", q.sid {'DESC' if backwards else 'ASC'}"
    columns = ", ".join(f"q.k{n}" for n in range(len(sort)))
    return tx.execute(
        f"SELECT q.sid, q.resource_id, {columns} FROM ({inner}) q{outer_where} ORDER BY {order} LIMIT ?",
        [*params, limit],
    ).fetchall()


def _planned_once(tx: Tx, sets: KeySets) -> Tx:
    """Where a lone set of one table drives (keysets.intersected_page), its statements keep their plan.

    A search's SQL is planned for its values (``run_search``), but these statements' plans are fixed by their
    form: the keys of one lookup-index range, sorted and taken in order (``OFFSET 0``), each looked up
    laterally; only the values change. Planning them (the access policy's subqueries in each) cost 0.8 ms of
    PostgreSQL's CPU per page of ``Patient?family=X``, running them 0.13 (measured on one connection, 1,500
    pages of ten families). Several sets and chains stay planned each time: which set drives and how the
    others are checked depends on their sizes."""
    return tx.reusing_plans() if lone_set(sets) else tx


def _first_page_with_total(
    tx: Tx, request: SearchRequest, sets: KeySets, limit: int
) -> tuple[list[tuple[Any, ...]], int] | None:
    """The first page's rows and the total in one statement, when both are driven from counted sets of keys
    (PostgreSQL, keysets.intersected_page): None when the page is read another way."""
    if request.sort or sets.keys is not None or tx.dialect != "postgres" or not intersectable(sets):
        return None
    counts = _counts(tx, sets)
    if 0 in counts:
        return [], 0  # a set without keys: nothing matches
    page = intersected_page(sets, counts, None, False, limit, probe_bound(sets), total=True)
    if page is None:
        return None
    rows = _planned_once(tx, sets).execute(page.sql, page.params).fetchall()
    total = int(rows[0][2]) if rows else 0
    return [tuple(row[:2]) for row in rows], total


def _counts(tx: Tx, sets: KeySets) -> list[int]:
    """Each set's keys, counted up to keysets.PROBE_KEYS, once per search (the total and the page share them)."""
    if sets.counts is None:
        bound = probe_bound(sets)
        counted = probe(sets.sets, sets.walks, bound)
        row = _planned_once(tx, sets).execute(counted.sql, counted.params).fetchone()
        assert row is not None
        probed(sets, list(row), bound)
    assert sets.counts is not None
    return sets.counts


def _keys_of(row: tuple[Any, ...], sort_length: int) -> list[Any]:
    return [_plain(value) for value in row[2 : 2 + sort_length]] + [int(row[0])]


def _plain(value: Any) -> Any:
    return float(value) if not isinstance(value, int | float | str) else value


def _total(tx: Tx, dialect: Dialect, sets: KeySets, how: str) -> int:
    where = sets.where
    if how == "estimate" and dialect == "postgres":
        row = tx.execute(f"EXPLAIN (FORMAT JSON) SELECT a.sid FROM search_ids a WHERE {where.sql}", where.params)
        plan = row.fetchone()
        if plan is not None:
            document = plan[0] if not isinstance(plan[0], str) else orjson.loads(plan[0])
            return int(document[0]["Plan"]["Plan Rows"])
    if dialect == "postgres" and intersectable(sets):
        counts = _counts(tx, sets)
        if 0 in counts:
            return 0
        counted = intersected_count(sets, counts, probe_bound(sets))
        if counted is not None:
            found = _planned_once(tx, sets).execute(counted.sql, counted.params).fetchone()
            return int(found[0]) if found else 0
    found = tx.execute(f"SELECT COUNT(*) FROM search_ids a WHERE {where.sql}", where.params).fetchone()
    return int(found[0]) if found else 0


def run_search(
    tx: Tx, dialect: Dialect, request: SearchRequest, base: str | None, count: int, viewer: Viewer | None = None
) -> Page:
    """One page of ``request``: ``count`` matches after the request's cursor (or the first page), of the
    resources ``viewer`` may see (every resource when ``viewer`` is None)."""
    if dialect != "postgres":
        return _run(tx, dialect, request, base, count, viewer)
    # Not prepared: a prepared statement may, after five runs, get one generic plan for any values, which
    # cannot know that a common code and a rare identifier need different plans (measured: 0.2 ms custom,
    # 140 ms generic); unprepared, each is planned for its values, and a search's many SQL shapes cost no
    # Parse round trip nor evict the prepared reads. (JIT is off on the views' connections: projections.db.)
    return _run(tx.unprepared(), dialect, request, base, count, viewer)


def _run(tx: Tx, dialect: Dialect, request: SearchRequest, base: str | None, count: int, viewer: Viewer | None) -> Page:
    if request.cursor is not None:
        direction, snapshot, after = _decode(request.cursor, request.sort)
        backwards: bool = direction == "p"
        cursor_keys: list[Any] | None = after
    else:
        (snapshot, viewer), backwards, cursor_keys = _snapshot(tx, request.resource_type, viewer), False, None
    # The first page needs no bound: the snapshot is the newest key there is (and a resource created
    # meanwhile sorts last); it bounds the pages after it. A first page's viewer knows its consents already.
    viewer = with_consents(tx, viewer) if viewer is not None else None
    visible = _visible(viewer, "a", dialect)
    # Chains and _has pass through other resources: the same policy holds for each of them.
    policy = None if viewer is None else _policy(viewer, dialect)
    sets = _where(tx, request, base, snapshot if cursor_keys is not None else None, visible, policy, dialect)
    page = Page([], filtered=viewer is not None and (viewer.types is not None or not viewer.break_glass))
    total_how = request.total or "accurate"
    # A first page whose total is asked may read both at once; breaking the glass counts twice (below).
    at_once = total_how == "accurate" and count > 0 and request.summary != "count" and cursor_keys is None
    counted = None
    if at_once and (viewer is None or not viewer.break_glass):
        counted = _first_page_with_total(tx, request, sets, count + 1)
    rows: list[tuple[Any, ...]] = []
    if counted is not None:
        rows, page.total = counted
    elif total_how != "none" or count == 0 or request.summary == "count":
        how = total_how if total_how != "none" else "accurate"
        page.total = _total(tx, dialect, sets, how)
        if viewer is not None and viewer.break_glass and page.total:
            # A count is a disclosure too: when it includes what only breaking the glass reaches, the
            # access is one (logged for review and audited as BTG) even if no such entry is on the page.
            within = replace(viewer, break_glass=False)
            bound = snapshot if cursor_keys is not None else None
            policed = _where(
                tx, request, base, bound, _visible(within, "a", dialect), _policy(within, dialect), dialect
            )
            page.break_glass_used = _total(tx, dialect, policed, how) != page.total
    if count == 0 or request.summary == "count":
        return page
    if counted is None:
        rows = _page_rows(tx, request, sets, count + 1, cursor_keys, backwards)
    more = len(rows) > count
    rows = rows[:count]
    if backwards:
        rows.reverse()
    page.matches = [Match(request.resource_type, str(row[1]), int(row[0])) for row in rows]
    if rows:
        first, last = _keys_of(rows[0], len(request.sort)), _keys_of(rows[-1], len(request.sort))
        has_next = more if not backwards else True
        has_prev = (cursor_keys is not None) if not backwards else more
        if has_next:
            page.next_cursor = _encode("n", snapshot, last)
        if has_prev:
            page.prev_cursor = _encode("p", snapshot, first)
    elif cursor_keys is not None:
        # Past the end (or before the start: everything there was deleted): offer the way back.
        if backwards:
            page.next_cursor = _encode("n", snapshot, cursor_keys)
        else:
            page.prev_cursor = _encode("p", snapshot, cursor_keys)
    _include_all(tx, request, base, page, visible)
    if viewer is not None and viewer.break_glass and not page.break_glass_used:
        page.break_glass_used = _beyond_policy(tx, dialect, viewer, [*page.matches, *page.includes])
    return page


def _beyond_policy(tx: Tx, dialect: Dialect, viewer: Viewer, matches: list[Match]) -> bool:
    """Whether some of ``matches`` are visible only because the viewer broke the glass."""
    clause, params = institution_clause(*_columns("a", dialect), viewer.institution, viewer.now)
    sids = [m.sid for m in matches]
    for start in range(0, len(sids), 400):
        chunk = sids[start : start + 400]
        row = tx.execute(
            f"SELECT 1 FROM search_ids a WHERE a.sid IN ({', '.join('?' * len(chunk))}) AND NOT {clause} LIMIT 1",
            [*chunk, *params],
        ).fetchone()
        if row is not None:
            return True
    return False


# -- _include and _revinclude (R4 §3.1.1.5.4 "Including other resources") ----------------------------


def _base_clause(base: str | None) -> Condition:
    if base is None:
        return Condition("r.base IS NULL")
    return Condition("(r.base IS NULL OR r.base = ?)", [base.rstrip("/")])


def _forward(tx: Tx, include: Include, sources: list[Match], base: str | None) -> set[tuple[str, str]]:
    sids = [m.sid for m in sources if m.resource_type == include.source_type]
    if not sids:
        return set()
    marks = ", ".join("?" * len(sids))
    clause = _base_clause(base)
    sql = (
        f"SELECT DISTINCT r.target_type, r.target_id FROM search_reference r WHERE r.sid IN ({marks}) "
        f"AND r.resource_type = ? AND r.target_type IS NOT NULL AND {clause.sql}"
    )
    params: list[Any] = [*sids, include.source_type, *clause.params]
    if include.param is not None:
        sql += " AND r.param = ?"
        params.append(include.param)
    if include.target_type is not None:
        sql += " AND r.target_type = ?"
        params.append(include.target_type)
    return {(str(t), str(i)) for t, i in tx.execute(sql, params).fetchall()}


def _reverse(
    tx: Tx, include: Include, targets: list[Match], base: str | None, visible: Condition | None
) -> list[Match]:
    wanted = include.target_type
    ids_by_type: dict[str, list[str]] = {}
    for match in targets:
        if wanted is None or match.resource_type == wanted:
            ids_by_type.setdefault(match.resource_type, []).append(match.resource_id)
    found: list[Match] = []
    clause = _base_clause(base)
    policy = f" AND {visible.sql}" if visible is not None else ""
    for target_type, ids in ids_by_type.items():
        marks = ", ".join("?" * len(ids))
        rows = tx.execute(
            "SELECT a.resource_type, a.resource_id, a.sid FROM search_ids a WHERE a.resource_type = ? AND a.sid IN ("
            "SELECT r.sid FROM search_reference r WHERE r.resource_type = ? AND r.param = ? "
            f"AND r.target_type = ? AND r.target_id IN ({marks}) AND {clause.sql}){policy} ORDER BY a.sid LIMIT ?",
            [
                include.source_type,
                include.source_type,
                include.param,
                target_type,
                *ids,
                *clause.params,
                *(visible.params if visible is not None else []),
                MAX_INCLUDES + 1,
            ],
        ).fetchall()
        found += [Match(str(t), str(i), int(s)) for t, i, s in rows]
    return found


def _resolve(tx: Tx, keys: set[tuple[str, str]], visible: Condition | None) -> list[Match]:
    """The current (indexed) resources among ``keys`` that the viewer may see, with their sids; dangling
    references drop out."""
    by_type: dict[str, list[str]] = {}
    for resource_type, resource_id in sorted(keys):
        by_type.setdefault(resource_type, []).append(resource_id)
    found: list[Match] = []
    for resource_type, ids in by_type.items():
        for start in range(0, len(ids), 400):
            chunk = ids[start : start + 400]
            marks = ", ".join("?" * len(chunk))
            policy = f" AND {visible.sql}" if visible is not None else ""
            rows = tx.execute(
                f"SELECT a.sid, a.resource_id FROM search_ids a WHERE a.resource_type = ? "
                f"AND a.resource_id IN ({marks}){policy}",
                [resource_type, *chunk, *(visible.params if visible is not None else [])],
            ).fetchall()
            found += [Match(resource_type, str(i), int(s)) for s, i in rows]
    return sorted(found, key=lambda m: m.sid)


def _include_all(tx: Tx, request: SearchRequest, base: str | None, page: Page, visible: Condition | None) -> None:
    if not request.includes and not request.revincludes:
        return
    seen = {(m.resource_type, m.resource_id) for m in page.matches}
    frontier: list[Match] = list(page.matches)
    included: list[Match] = []
    for round_number in range(_ITERATE_ROUNDS):
        found: list[Match] = []
        keys: set[tuple[str, str]] = set()
        for include in request.includes:
            if round_number == 0 or include.iterate:
                keys |= _forward(tx, include, frontier, base)
        # Hidden resources are neither included nor followed by ``:iterate`` (no path through them).
        found += _resolve(tx, {key for key in keys if key not in seen}, visible)
        for include in request.revincludes:
            if round_number == 0 or include.iterate:
                found += [
                    m
                    for m in _reverse(tx, include, frontier, base, visible)
                    if (m.resource_type, m.resource_id) not in seen
                ]
        fresh = []
        for match in found:
            key = (match.resource_type, match.resource_id)
            if key not in seen:
                seen.add(key)
                fresh.append(match)
        included += fresh
        if len(included) > MAX_INCLUDES:
            page.includes_truncated = True
            included = included[:MAX_INCLUDES]
            break
        if not fresh:
            break
        frontier = fresh
    page.includes = included
