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
key order, which finds a page soon when the sets are dense. A chain's set (R4 §3.1.1.4.12) is read from
its targets outward (projections/search/chains.py): the probe fetches its keys, up to :data:`PROBE_KEYS`,
and the page and the total read them from that array, not from the index again; a larger chain is checked
per key, its references by the key, their targets by theirs. At 1,000,000 resources
``Encounter?patient.name=<family>&date=ge2024-01-01`` (about 4,000 Encounters of 1,000 Patients, a tenth of
them in the dates) read some 41,000 buffers as semi-joins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from projections.search.query import Filter
from projections.search.sql import Condition

__all__ = [
    "PROBE_KEYS",
    "SINGLE_SET_KEYS",
    "KeySets",
    "Walk",
    "driven_page",
    "intersectable",
    "intersected_count",
    "intersected_page",
    "key_sets",
    "key_subquery",
    "lone_set",
    "one_table",
    "probe",
    "probe_bound",
    "probed",
    "row_check",
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


@dataclass(frozen=True)
class Walk:
    """A chain's set written the other way (projections/search/chains.py): its keys read from the targets
    outward, and the check of one key (``c.sid``) against the chain."""

    keys: Condition
    check: Condition


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
    #: Per set, a chain's keys read from its targets outward (projections/search/chains.py), else None.
    walks: list[Walk | None] = field(default_factory=list)
    #: Each set's keys as counted by :func:`probe` (PostgreSQL, several sets), once per search.
    counts: list[int] | None = None
    #: Per set, a walked chain's keys as :func:`probe` fetched them (sorted, distinct), when fewer than the
    #: bound; None for the other sets.
    fetched: list[list[int] | None] | None = None


def key_sets(parts: Sequence[tuple[Condition, Filter | None, Walk | None]], alias: str) -> KeySets:
    """AND ``parts``, each a condition on ``alias``, when a page may be driven from its keys (engine's
    ``_drives``) the filter that made it, and for a chain its keys read from its targets outward
    (projections/search/chains.py); the first part is the resource type's, written bare."""
    where = Condition(
        " AND ".join(part.sql if number == 0 else f"({part.sql})" for number, (part, _, _) in enumerate(parts)),
        [p for part, _, _ in parts for p in part.params],
    )
    sets = [(part, drives, walk) for part, drives, walk in parts if key_subquery(part.sql, alias) is not None]
    subqueries = [Condition(key_subquery(part.sql, alias) or "", list(part.params)) for part, _, _ in sets]
    walks = [walk for _, _, walk in sets]
    others = _and([part for part, _, _ in parts if all(part is not found for found, _, _ in sets)])
    if len(sets) != 1 or sets[0][1] is None:
        return KeySets(where, sets=subqueries, others=others, walks=walks)
    return KeySets(
        where, keys=subqueries[0], rest=others, driver=sets[0][1], sets=subqueries, others=others, walks=walks
    )


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

#: The same bound for a search's only set of keys (not a chain): counting it is a statement the semi-join
#: did not need, and 5,000 keys of ``Observation?code`` (a tenth of the Observations) cost about a
#: millisecond more than the plain page at 200,000 resources; a set larger than this is dense enough that
#: the semi-join, walking ``search_ids`` in key order, finds its page soon.
SINGLE_SET_KEYS = 1000


def lone_set(sets: KeySets) -> bool:
    """Whether ``sets`` is a search's only set of keys, read from one value table (not a chain)."""
    return len(sets.sets) == 1 and (not sets.walks or sets.walks[0] is None)


def probe_bound(sets: KeySets) -> int:
    """How many keys :func:`probe` counts of each of ``sets`` (:data:`SINGLE_SET_KEYS` for a lone set)."""
    return SINGLE_SET_KEYS if lone_set(sets) else PROBE_KEYS


def probe(sets: Sequence[Condition], walks: Sequence[Walk | None] = (), bound: int = PROBE_KEYS) -> Condition:
    """One statement counting the keys of each set, ``bound`` at most: each count reads at most ``bound``
    entries of its index, so it costs little whatever the set, and it is the server's own count, good
    whether the tables were ever analysed or not. A chain's set (``walks``) is not counted but fetched, its
    first ``bound`` keys as an array (with repeats: a resource may refer to two targets): reading it is
    most of what a page driven from it costs, and the page then reads it from the array, not again."""
    columns: list[str] = []
    params: list[object] = []
    for number, found in enumerate(sets):
        walk = walks[number] if number < len(walks) else None
        if walk is None:
            columns.append(f"(SELECT count(*) FROM (SELECT 1 FROM ({found.sql}) k LIMIT ?) p)")
            params += [*found.params, bound]
        else:
            columns.append(f"(SELECT array_agg(p.sid) FROM (SELECT k.sid FROM ({walk.keys.sql}) k LIMIT ?) p)")
            params += [*walk.keys.params, bound]
    return Condition(f"SELECT {', '.join(columns)}", params)


def probed(sets: KeySets, row: Sequence[object], bound: int = PROBE_KEYS) -> None:
    """Record :func:`probe`'s answer ``row`` on ``sets``: each set's count and each walked chain's keys (a
    chain that gave ``bound`` keys or more counts as ``bound``, its keys not kept)."""
    counts: list[int] = []
    fetched: list[list[int] | None] = []
    for value in row:
        if isinstance(value, int):
            counts.append(value)
            fetched.append(None)
            continue
        keys = [int(key) for key in value] if isinstance(value, list) else []
        if len(keys) >= bound:
            counts.append(bound)
            fetched.append(None)
        else:
            distinct = sorted(set(keys))
            counts.append(len(distinct))
            fetched.append(distinct)
    sets.counts, sets.fetched = counts, fetched


#: A set of keys read from one value table: ``SELECT [x.]sid FROM <table> [x] WHERE [x.]resource_type = ?``.
_ONE_TABLE = re.compile(
    r"SELECT (?P<q>(?:\w+\.)?)sid FROM (?P<table>search_\w+)(?P<alias> \w+)? WHERE (?P=q)resource_type = \?"
)


def intersectable(sets: KeySets) -> bool:
    """Whether the page and count are driven by :func:`intersected_page`: one or several sets of keys, each
    read from one value table's lookup index or a chain read from its targets outward (:attr:`KeySets.walks`).

    A chain's set as a semi-join is not counted apart: read on its own in a never-analysed store, its plan
    walked every reference of the type once per match of the inner condition (300,000 resources: over the
    60 s statement timeout). A single set of one table (``Patient?family=X``) is driven too: as a semi-join
    the planner checked the access policy (a subplan per row) on every key of the set before sorting them
    for the page (400 owner look-ups for a page of 20, tests/integration/search/test_page_plans.py), or, with
    statistics older than the table, on every row of the type before the join; driven, the page checks 21."""
    walked = [walk is not None for walk in (*sets.walks, *[None] * (len(sets.sets) - len(sets.walks)))]
    if not sets.sets:
        return False
    return all(one_table(found) or walk for found, walk in zip(sets.sets, walked, strict=True))


def one_table(found: Condition) -> bool:
    """Whether the set ``found`` is read from one value table (``SELECT sid FROM <table> WHERE ...``)."""
    head = _ONE_TABLE.match(found.sql)
    return head is not None and "SELECT" not in found.sql[head.end() :]


def row_check(found: Condition, key: str) -> Condition:
    """Whether the resource keyed ``key`` is in the set ``found`` (:func:`intersectable`), looked up by that
    key alone.

    Written as a correlated subplan (``(EXISTS ...) IS TRUE`` is not turned into a join, and ``OFFSET 0``
    keeps PostgreSQL from planning it as the hashed ``sid IN (...)`` it may choose instead, which reads the
    whole set: 7,956 dates for a page of 20 in tests/integration/search/test_page_plans.py), it runs once per
    key with ``sid = <key>``; ``resource_type || ''`` keeps the type out of the lookup indexes, so the plan is
    the value table's sid index, a handful of rows, whatever the statistics (without them the planner takes
    a lookup index's range of the value for a few rows, and scans all of it for every key; see
    projections.search.index.delete_by_sid)."""
    head = _ONE_TABLE.match(found.sql)
    assert head is not None
    q = head["q"]
    return Condition(
        f"(EXISTS (SELECT 1 FROM {head['table']}{head['alias'] or ''} WHERE {q}sid = {key} "
        f"AND {q}resource_type || '' = ?{found.sql[head.end() :]} OFFSET 0)) IS TRUE",
        list(found.params),
    )


def intersected_page(
    sets: KeySets,
    counts: Sequence[int],
    after: int | None,
    backwards: bool,
    limit: int,
    bound: int = PROBE_KEYS,
    total: bool = False,
) -> Condition | None:
    """The page query (PostgreSQL) of several sets of keys, driven from the smallest (``counts``, from
    :func:`probe`): its keys sorted once and taken in order until ``limit`` passed every check. Another set
    smaller than ``bound`` is read once into a hash (``IN`` that is not a join is a hashed subplan); a larger
    one is looked up key by key (:func:`_row_check`), so it costs what the page reads of it, not its size.
    None when every set is ``bound`` keys or more: their intersection is then left to the plain semi-joins,
    which walk ``search_ids`` in key order and stop at the page's end.

    ``total``: each row also carries the count of every match (a window over the rows before the limit), for
    a first page whose Bundle.total is asked: the count checks every key of the driving set anyway, and the
    page then costs no statement of its own (its planning, about as long as its run, and a round trip)."""
    rows = _intersected(sets, counts, after, backwards, bound, total)
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
    sets: KeySets, counts: Sequence[int], after: int | None, backwards: bool, bound: int, total: bool = False
) -> Condition | None:
    driver = min(range(len(counts)), key=lambda number: counts[number])
    if counts[driver] >= bound:
        return None
    fetched = sets.fetched or [None] * len(counts)
    found_sets = [
        Condition("SELECT unnest(?::bigint[]) AS sid", [keys]) if keys is not None else found
        for found, keys in zip(sets.sets, fetched, strict=True)
    ]
    checks: list[Condition] = []
    for number, found in enumerate(found_sets):
        if number == driver:
            continue
        if counts[number] < bound:
            checks.append(Condition(f"(c.sid IN ({found.sql})) IS TRUE", list(found.params)))
        else:
            walk = sets.walks[number] if number < len(sets.walks) else None
            checks.append(walk.check if walk is not None else row_check(found, "c.sid"))
    order = "DESC" if backwards else "ASC"
    keyset, keyset_params = "", []
    if after is not None:
        keyset, keyset_params = f" WHERE d.sid {'<' if backwards else '>'} ?", [after]
    keys = found_sets[driver]
    # OFFSET 0: the checks stay above the sort (pushed into it, they would run on every key of the driver).
    counted = ", count(*) OVER ()" if total else ""
    return Condition(
        f"SELECT c.sid, a.resource_id{counted} FROM (SELECT DISTINCT d.sid FROM ({keys.sql}) d{keyset} "
        f"ORDER BY d.sid {order} OFFSET 0) c CROSS JOIN LATERAL (SELECT a.resource_id FROM search_ids a "
        f"WHERE a.sid = c.sid AND {sets.others.sql}) a WHERE {_and(checks).sql}",
        [*keys.params, *keyset_params, *sets.others.params, *(p for check in checks for p in check.params)],
    )
