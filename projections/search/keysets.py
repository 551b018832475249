"""What drives a search's first pages: index order, or the matches of a full-text condition, sorted once.

A page is the first matches in key order (``ORDER BY a.sid LIMIT n``, engine.py). Most conditions are a
set of index keys, ``a.sid IN (SELECT sid FROM <value table> WHERE ...)``, that a B-tree returns in key
order or in a handful of ranges, and PostgreSQL walks ``search_ids`` and such a set side by side, stopping
at the page's end. Full-text matches (R4 ``_text``, ``_content``) come out of a GIN bitmap in no key order,
and every one of them is read whatever the page: planned as a semi-join, each match was looked up in
``search_ids`` and the rows sorted after (measured at 250,000 resources: 12,300 buffers for
``Encounter?_text=<reason>``, 2,500 matches). So when such a set is a search's only set of keys, the page
is driven from it (:func:`driven_page`): its keys sorted once, then looked up one at a time in key order
(a lateral join is a nested loop, whatever the statistics say, and autovacuum may never have run) until the
page is full, the other conditions (type, access policy, snapshot) checked on each: 2,460 buffers. A keyed
composite's matches (types/composite.py) come in key order, from one index range; but as a semi-join on a
store never analysed PostgreSQL guesses one match and collects, looks up and sorts every one of them. Driven,
the range is read in key order (a ``DISTINCT ... ORDER BY sid`` over an index already in that order is a
streamed ``Unique``) and stops with the page. A filter that can read its matches in key order itself gives
its own page query instead (:meth:`projections.search.special.SpecialFilter.ordered_page`: ``_text``'s
words on PostgreSQL, projections/search/narrative.py), which stops at the page's end without reading the
other matches.

With several sets of keys each read from one value table (``Patient?family&given``, ``Observation?code&date``),
which one drives is not left to the planner's estimates: they are only as good as the last ANALYZE, and a
store may never have had one (autovacuum off; projections/statistics.py analyses after 1,000 changes). As
semi-joins, at 300,000 resources, a page read 2,420 (family&given) and 3,254 (code&date) buffers analysed,
and never analysed took 154 ms and 4.2 s, some over the 60 s statement timeout. So the server counts each
set itself, up to :data:`PROBE_KEYS` keys (:func:`probe`: one statement of bounded index reads), and drives
the page and the total from the smallest (:func:`intersected_page`), the other sets checked per key: 92-96
and 920-950 buffers, analysed or not. When every set is that large, the semi-joins walk ``search_ids`` in
key order, which finds a page soon when the sets are dense. A chain's set stays with the planner
(:func:`intersectable`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from projections.search.query import Filter
from projections.search.sql import Condition

__all__ = [
    "PROBE_KEYS",
    "KeySets",
    "driven_page",
    "intersectable",
    "intersected_count",
    "intersected_page",
    "key_sets",
    "key_subquery",
    "probe",
]


def key_subquery(sql: str, alias: str) -> str | None:
    """The subquery of a condition that is exactly ``<alias>.sid IN (<subquery>)``, else None."""
    head = f"{alias}.sid IN ("
    if not sql.startswith(head) or not sql.endswith(")"):
        return None
    depth = 0
    for position in range(len(head) - 1, len(sql)):
        char = sql[position]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0 and position != len(sql) - 1:
                return None  # ``a.sid IN (...) OR ...``: the parenthesis closes before the end
    return sql[len(head) : -1]


@dataclass
class KeySets:
    """A search's conditions on ``search_ids`` (alias ``a``)."""

    #: Every condition AND-ed: what totals, sorted pages and pages in index order read.
    where: Condition
    #: The only set of keys, when the page is driven from it (full text, a keyed composite: engine._drives).
    keys: Condition | None = None
    #: The other conditions (type, access policy, snapshot...), AND-ed.
    rest: Condition = field(default_factory=lambda: Condition("1 = 1"))
    #: The filter whose condition is :attr:`keys` (a special one may read its matches in key order itself).
    driver: Filter | None = None
    #: Every set of keys (each ``a.sid IN (<subquery>)`` condition's subquery), in the request's order.
    sets: list[Condition] = field(default_factory=list)
    #: The conditions that are not sets of keys (type, access policy, snapshot, ``_has``...), AND-ed.
    others: Condition = field(default_factory=lambda: Condition("1 = 1"))
    #: Each set's keys as counted by :func:`probe` (PostgreSQL, several sets), once per search.
    counts: list[int] | None = None


def key_sets(parts: Sequence[tuple[Condition, Filter | None]], alias: str) -> KeySets:
    """AND ``parts``, each a condition on ``alias`` and, when a page may be driven from its keys (engine's
    ``_drives``), the filter that made it (the first part is the resource type's, written bare)."""
    where = Condition(
        " AND ".join(part.sql if number == 0 else f"({part.sql})" for number, (part, _) in enumerate(parts)),
        [p for part, _ in parts for p in part.params],
    )
    sets = [(part, drives) for part, drives in parts if key_subquery(part.sql, alias) is not None]
    subqueries = [Condition(key_subquery(part.sql, alias) or "", list(part.params)) for part, _ in sets]
    others = _and([part for part, _ in parts if all(part is not found for found, _ in sets)])
    if len(sets) != 1 or sets[0][1] is None:
        return KeySets(where, sets=subqueries, others=others)
    return KeySets(where, keys=subqueries[0], rest=others, driver=sets[0][1], sets=subqueries, others=others)


def _and(conditions: Sequence[Condition]) -> Condition:
    if not conditions:
        return Condition("1 = 1")
    return Condition(" AND ".join(f"({c.sql})" for c in conditions), [p for c in conditions for p in c.params])


def driven_page(sets: KeySets, after: int | None, backwards: bool, limit: int) -> Condition:
    """The page query (PostgreSQL) driven from the keys: sorted once, each looked up in order (a lateral
    join is a nested loop) until ``limit`` rows passed the other conditions."""
    assert sets.keys is not None
    order = "DESC" if backwards else "ASC"
    bound, bound_params = "", []
    if after is not None:
        bound, bound_params = f" WHERE d.sid {'<' if backwards else '>'} ?", [after]
    return Condition(
        f"SELECT c.sid, a.resource_id FROM (SELECT DISTINCT d.sid FROM ({sets.keys.sql}) d{bound} "
        f"ORDER BY d.sid {order}) c CROSS JOIN LATERAL (SELECT a.resource_id FROM search_ids a "
        f"WHERE a.sid = c.sid AND {sets.rest.sql}) a ORDER BY c.sid {order} LIMIT ?",
        [*sets.keys.params, *bound_params, *sets.rest.params, limit],
    )


# -- several sets of keys -----------------------------------------------------------------------------

#: How many keys of each set :func:`probe` counts, at most: what reading a set whole may cost a page.
PROBE_KEYS = 5000


def probe(sets: Sequence[Condition], bound: int = PROBE_KEYS) -> Condition:
    """One statement counting the keys of each set, ``bound`` at most: each count reads at most ``bound``
    entries of its index, so it costs little whatever the set, and it is the server's own count, good
    whether the tables were ever analysed or not."""
    columns = ", ".join(f"(SELECT count(*) FROM (SELECT 1 FROM ({found.sql}) k LIMIT ?) p)" for found in sets)
    return Condition(f"SELECT {columns}", [p for found in sets for p in (*found.params, bound)])


#: A set of keys read from one value table: ``SELECT [x.]sid FROM <table> [x] WHERE [x.]resource_type = ?``.
_ONE_TABLE = re.compile(
    r"SELECT (?P<q>(?:\w+\.)?)sid FROM (?P<table>search_\w+)(?P<alias> \w+)? WHERE (?P=q)resource_type = \?"
)


def intersectable(sets: KeySets) -> bool:
    """Whether the page and count are driven by :func:`intersected_page`: several sets of keys, each read
    from one value table's lookup index. A chain's set (a join through ``search_ids`` and another value
    table) is not counted apart: read on its own in a never-analysed store, its plan walked every reference
    of the type once per match of the inner condition (300,000 resources: over the 60 s statement timeout)."""
    return len(sets.sets) > 1 and all(_one_table(found) for found in sets.sets)


def _one_table(found: Condition) -> bool:
    head = _ONE_TABLE.match(found.sql)
    return head is not None and "SELECT" not in found.sql[head.end() :]


def _row_check(found: Condition, key: str) -> Condition:
    """Whether the resource keyed ``key`` is in the set ``found`` (:func:`intersectable`), looked up by that
    key alone.

    Written as a correlated subplan (``(EXISTS ...) IS TRUE`` is not turned into a join), it runs once per
    key with ``sid = <key>``; ``resource_type || ''`` keeps the type out of the lookup indexes, so the plan is
    the value table's sid index, a handful of rows, whatever the statistics (without them the planner takes
    a lookup index's range of the value for a few rows, and scans all of it for every key; see
    projections.search.index.delete_by_sid)."""
    head = _ONE_TABLE.match(found.sql)
    assert head is not None
    q = head["q"]
    return Condition(
        f"(EXISTS (SELECT 1 FROM {head['table']}{head['alias'] or ''} WHERE {q}sid = {key} "
        f"AND {q}resource_type || '' = ?{found.sql[head.end() :]})) IS TRUE",
        list(found.params),
    )


def intersected_page(
    sets: KeySets, counts: Sequence[int], after: int | None, backwards: bool, limit: int, bound: int = PROBE_KEYS
) -> Condition | None:
    """The page query (PostgreSQL) of several sets of keys, driven from the smallest (``counts``, from
    :func:`probe`): its keys sorted once and taken in order until ``limit`` passed every check. Another set
    smaller than ``bound`` is read once into a hash (``IN`` that is not a join is a hashed subplan); a larger
    one is looked up key by key (:func:`_row_check`), so it costs what the page reads of it, not its size.
    None when every set is ``bound`` keys or more: their intersection is then left to the plain semi-joins,
    which walk ``search_ids`` in key order and stop at the page's end."""
    rows = _intersected(sets, counts, after, backwards, bound)
    if rows is None:
        return None
    order = "DESC" if backwards else "ASC"
    return Condition(f"{rows.sql} ORDER BY c.sid {order} LIMIT ?", [*rows.params, limit])


def intersected_count(sets: KeySets, counts: Sequence[int], bound: int = PROBE_KEYS) -> Condition | None:
    """The count of the matches (``_total=accurate``) the same way: each key of the smallest set checked
    once, at most ``bound`` of them (planned as semi-joins, a never-analysed store's count of a code and a
    date scanned one set once per key of the other: over a minute at 20,000 rows). None as for a page."""
    rows = _intersected(sets, counts, None, False, bound)
    return None if rows is None else Condition(f"SELECT COUNT(*) FROM ({rows.sql}) q", rows.params)


def _intersected(
    sets: KeySets, counts: Sequence[int], after: int | None, backwards: bool, bound: int
) -> Condition | None:
    driver = min(range(len(counts)), key=lambda number: counts[number])
    if counts[driver] >= bound:
        return None
    checks: list[Condition] = []
    for number, found in enumerate(sets.sets):
        if number == driver:
            continue
        if counts[number] < bound:
            checks.append(Condition(f"(c.sid IN ({found.sql})) IS TRUE", list(found.params)))
        else:
            checks.append(_row_check(found, "c.sid"))
    order = "DESC" if backwards else "ASC"
    keyset, keyset_params = "", []
    if after is not None:
        keyset, keyset_params = f" WHERE d.sid {'<' if backwards else '>'} ?", [after]
    keys = sets.sets[driver]
    # OFFSET 0: the checks stay above the sort (pushed into it, they would run on every key of the driver).
    return Condition(
        f"SELECT c.sid, a.resource_id FROM (SELECT DISTINCT d.sid FROM ({keys.sql}) d{keyset} "
        f"ORDER BY d.sid {order} OFFSET 0) c CROSS JOIN LATERAL (SELECT a.resource_id FROM search_ids a "
        f"WHERE a.sid = c.sid AND {sets.others.sql}) a WHERE {_and(checks).sql}",
        [*keys.params, *keyset_params, *sets.others.params, *(p for check in checks for p in check.params)],
    )
