"""The narrative's words in key order: what ``_text`` reads on PostgreSQL (R4 §3.1.1.5 "Parameters for all
resources").

A GIN index on a ``tsvector`` finds the matches in no key order, and a search page is the first matches in
key order (``sid``, engine.py): every match was read and sorted for a page of 20 (measured at 1 million
resources: 10,000 matches of ``Encounter?_text=dolor torácico``, 56 ms). So the narrative's words are kept as
rows of ``search_narrative_words`` (resource type, word, ``sid``): one B-tree under that key holds each
word's resources in key order. The words are the Spanish configuration's lexemes of the folded narrative
(``tsvector_to_array(to_tsvector('spanish', ...))``), exactly what ``plainto_tsquery`` ANDs, so a value
matches the resources that have every one of its lexemes.

A page walks those lists side by side (a leapfrog join, :func:`ordered_page`): the next key at or after a
candidate in one word's list, then in the next word's list from there, and so on round the words until
every list has the same key; each step is one index probe (``min(sid)`` under an equality prefix, which the
planner answers from the index whatever the statistics say: a store here is never analysed). The walk stops
as soon as the page is full, so a page costs what its rows do, not what every match does.

The rows of a resource are found from its ``search_fulltext`` row (whose ``narrative`` keeps its
``tsvector``), so an update or a delete removes exactly them through the primary key. SQLite keeps its FTS5
index (:mod:`projections.search.fulltext`); the table exists there too, empty, so the view owns the same
tables on both backends.
"""

from __future__ import annotations

from collections.abc import Sequence

from projections.db import Dialect, Tx
from projections.search.sql import Condition

__all__ = ["WORDS", "ddl", "delete", "insert_from", "matches", "ordered_page"]

WORDS = "search_narrative_words"
#: The lexemes of a (folded) value, as ``plainto_tsquery('spanish', ...)`` ANDs them.
_LEXEMES = "tsvector_to_array(to_tsvector('spanish', ?))"
_FIRST_KEY, _LAST_KEY = -(2**63), 2**63 - 1


def ddl(tx: Tx, dialect: Dialect) -> None:
    """Create the table; on a PostgreSQL store whose full-text view predates it, fill it from the narratives
    already indexed (their ``tsvector`` is still in ``search_fulltext``), so ``_text`` keeps finding them."""
    if dialect != "postgres":
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {WORDS} (resource_type TEXT NOT NULL, word TEXT NOT NULL, "
            "sid INTEGER NOT NULL, PRIMARY KEY (resource_type, word, sid)) WITHOUT ROWID"
        )
        return
    found = tx.execute(f"SELECT to_regclass('{WORDS}') IS NOT NULL").fetchone()
    tx.execute(
        f'CREATE TABLE IF NOT EXISTS {WORDS} (resource_type TEXT COLLATE "C" NOT NULL, '
        'word TEXT COLLATE "C" NOT NULL, sid BIGINT NOT NULL, PRIMARY KEY (resource_type, word, sid))'
    )
    if found is not None and not found[0]:
        tx.execute(insert_from("search_fulltext"))


def insert_from(rows: str) -> str:
    """``INSERT`` of the words of ``rows`` (a table or CTE with ``sid``, ``resource_type``, ``narrative``)."""
    return (
        f"INSERT INTO {WORDS} (resource_type, word, sid) SELECT r.resource_type, w.word, r.sid FROM {rows} r "
        "CROSS JOIN LATERAL unnest(tsvector_to_array(r.narrative)) AS w(word) WHERE r.narrative IS NOT NULL"
    )


def delete(tx: Tx, resource_type: str, ids: Sequence[str]) -> None:
    """Remove the words of these resources (before their ``search_fulltext`` rows go)."""
    tx.execute(
        f"DELETE FROM {WORDS} w USING search_fulltext f CROSS JOIN LATERAL unnest(tsvector_to_array(f.narrative)) "
        "AS d(word) WHERE f.resource_type = ? AND f.resource_id = ANY(?) AND w.resource_type = f.resource_type "
        "AND w.word = d.word AND w.sid = f.sid",
        [resource_type, list(ids)],
    )


def matches(resource_type: str, values: Sequence[str], alias: str) -> Condition:
    """``alias.sid IN (...)``: the resources having every lexeme of one of ``values`` (folded), for totals,
    sorted pages and searches with other sets of keys. A value of stop words only has no lexeme: no match."""
    ors = " UNION ".join(
        f"SELECT t.sid FROM {WORDS} t, (SELECT {_LEXEMES} AS w OFFSET 0) q WHERE t.resource_type = ? "
        "AND t.word = ANY(q.w) GROUP BY t.sid, q.w HAVING COUNT(*) = cardinality(q.w)"
        for _ in values
    )
    params = [p for value in values for p in (value, resource_type)]
    return Condition(f"{alias}.sid IN ({ors})", params)


def ordered_page(
    resource_type: str, values: Sequence[str], rest: Condition, after: int | None, backwards: bool, limit: int
) -> Condition:
    """The page query: for each of ``values`` (folded; OR), its matches after ``after`` in key order (reversed
    when ``backwards``) that pass ``rest`` (conditions on ``search_ids a``: type, access policy, snapshot),
    found by a leapfrog walk over its words' lists that stops at ``limit`` such matches; then the first
    ``limit`` of them all.

    The walk's state: the candidate key ``x``, how many words' lists in a row were found to hold it (``n``),
    the word to probe next (``i``), the matches found, and the last step's match. A step probes word ``i``
    for its first key at or after ``x``: if that is ``x``, one more list holds it, else the candidate moves
    there (held by that list only); when every list holds it, it is a match if ``search_ids`` has it under
    ``rest``, and the walk goes on after it. (``OFFSET 0`` keeps that look-up a subquery of its own: pulled
    up, it would run once for each use of its result.)"""
    if backwards:
        pick, reach, step = "max", "<=", "- 1"
        start = _LAST_KEY if after is None else after - 1
    else:
        pick, reach, step = "min", ">=", "+ 1"
        start = _FIRST_KEY if after is None else after + 1
    walks, params = [], []
    for n, value in enumerate(values):
        walks.append(
            f"v{n} AS MATERIALIZED (SELECT {_LEXEMES} AS w), "
            f's{n}(x, n, i, found, hit, id) AS (SELECT ?::bigint, 0, 0, 0, NULL::bigint, NULL::text COLLATE "C" '
            "UNION ALL SELECT CASE WHEN h.whole THEN p.c " + step + " ELSE p.c END, "
            "CASE WHEN h.whole THEN 0 ELSE m.n END, (s.i + 1) % greatest(cardinality(v.w), 1), "
            "s.found + CASE WHEN h.id IS NULL THEN 0 ELSE 1 END, CASE WHEN h.id IS NULL THEN NULL ELSE p.c END, h.id "
            f"FROM s{n} s CROSS JOIN v{n} v "
            f"CROSS JOIN LATERAL (SELECT {pick}(t.sid) AS c FROM {WORDS} t WHERE t.resource_type = ? "
            f"AND t.word = v.w[s.i + 1] AND t.sid {reach} s.x) p "
            "CROSS JOIN LATERAL (SELECT CASE WHEN p.c = s.x THEN s.n + 1 ELSE 1 END AS n) m "
            "CROSS JOIN LATERAL (SELECT m.n = cardinality(v.w) AS whole, CASE WHEN m.n = cardinality(v.w) THEN "
            f"(SELECT a.resource_id FROM search_ids a WHERE a.sid = p.c AND {rest.sql}) END AS id OFFSET 0) h "
            "WHERE p.c IS NOT NULL AND s.found < ?)"
        )
        params += [value, start, resource_type, *rest.params, limit]
    found = " UNION ".join(f"SELECT hit, id FROM s{n} WHERE hit IS NOT NULL" for n in range(len(values)))
    order = "DESC" if backwards else "ASC"
    return Condition(
        f"WITH RECURSIVE {', '.join(walks)} SELECT f.hit, f.id FROM ({found}) f ORDER BY f.hit {order} LIMIT ?",
        [*params, limit],
    )
