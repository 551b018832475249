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

With several sets of keys the plain semi-joins stay: which set should drive is the planner's to judge, and
intersecting the sets first was measured faster with statistics but slower without them (a store is never
analysed by the server: nested loops of a set in a set in ``search_ids``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from projections.search.query import Filter
from projections.search.sql import Condition

__all__ = ["KeySets", "driven_page", "key_sets", "key_subquery"]


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


def key_sets(parts: Sequence[tuple[Condition, Filter | None]], alias: str) -> KeySets:
    """AND ``parts``, each a condition on ``alias`` and, when a page may be driven from its keys (engine's
    ``_drives``), the filter that made it."""
    where = Condition(
        " AND ".join(part.sql if number == 0 else f"({part.sql})" for number, (part, _) in enumerate(parts)),
        [p for part, _ in parts for p in part.params],
    )
    sets = [(part, drives) for part, drives in parts if key_subquery(part.sql, alias) is not None]
    if len(sets) != 1 or sets[0][1] is None:
        return KeySets(where)
    driver, drives = sets[0]
    rest = [part for part, _ in parts if part is not driver]
    subquery = key_subquery(driver.sql, alias)
    assert subquery is not None
    return KeySets(where, Condition(subquery, list(driver.params)), _and(rest), drives)


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
