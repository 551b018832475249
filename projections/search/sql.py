"""Filters to SQL: one condition on a ``search_ids`` row per filter (R4 §3.1.1.5 matching rules).

Written once with ``?`` placeholders for both SQLite and PostgreSQL. A value filter is its parameter
type's condition (:mod:`projections.search.types`); ``:missing``, chains and reverse chains are built
here: chains and ``_has`` nest the same conditions on the referenced or referring type, and (auth on) the
access policy on each resource they pass through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projections.db import Tx
from projections.search.query import ChainFilter, Filter, HasFilter, MissingFilter, SameValueFilter, ValueFilter
from projections.search.special import SpecialFilter
from projections.search.types import SEARCH_TYPES
from projections.search.types.base import Condition, Context, Spans
from projections.search.types.date import date_filter

__all__ = ["Condition", "Context", "Spans", "condition", "read_spans"]


def read_spans(tx: Tx) -> dict[tuple[str, str], Spans]:
    """Every date parameter's :class:`Spans` (a few dozen rows)."""
    rows = tx.execute("SELECT resource_type, param, max_span, open_start, open_end FROM search_date_spans").fetchall()
    return {(str(t), str(p)): Spans(int(s), bool(a), bool(b)) for t, p, s, a, b in rows}


def condition(item: Filter, alias: str, base: str | None, context: Context | None = None) -> Condition:
    """The SQL condition on ``alias`` (a ``search_ids`` row) that ``item`` puts on a search."""
    context = context or Context()
    if isinstance(item, ValueFilter):
        return _value(item, alias, base, context)
    if isinstance(item, MissingFilter):
        return _missing(item, alias)
    if isinstance(item, SameValueFilter):
        return date_filter(alias, item.param, [list(item.values)], context.span(item.param))
    if isinstance(item, ChainFilter):
        return _chain(item, alias, base, context)
    if isinstance(item, SpecialFilter):
        return item.condition(alias, base, context)
    return _has(item, alias, base, context)


def _value(item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
    return SEARCH_TYPES[item.param.type].condition(item, alias, base, context)


def _flatten(conditions: Sequence[Condition]) -> list[Any]:
    return [p for c in conditions for p in c.params]


# -- :missing, chains, reverse chains ---------------------------------------------------------------


def _missing(item: MissingFilter, alias: str) -> Condition:
    param = item.param
    if param.code in ("_id", "_lastUpdated"):
        return Condition("1 = 0" if item.missing else "1 = 1")
    table = SEARCH_TYPES[param.type].table.name
    negation = "NOT " if item.missing else ""
    return Condition(
        f"{alias}.sid {negation}IN (SELECT sid FROM {table} WHERE resource_type = ? AND param = ?)",
        [param.resource_type, param.code],
    )


def _chain(item: ChainFilter, alias: str, base: str | None, context: Context) -> Condition:
    reference = context.next("r")
    targets: list[Condition] = []
    for target_type, inner in item.inner:
        target = context.next("t")
        nested = condition(inner, target, base, context)
        policy = context.policy(target)
        targets.append(
            Condition(
                f"{reference}.target_type = ? AND {reference}.target_id IN "
                f"(SELECT {target}.resource_id FROM search_ids {target} "
                f"WHERE {target}.resource_type = ? AND ({nested.sql}){policy.sql})",
                [target_type, target_type, *nested.params, *policy.params],
            )
        )
    ors = " OR ".join(f"({t.sql})" for t in targets)
    base_clause, base_params = (
        (f"({reference}.base IS NULL OR {reference}.base = ?)", [base.rstrip("/")])
        if base
        else (
            f"{reference}.base IS NULL",
            [],
        )
    )
    return Condition(
        f"{alias}.sid IN (SELECT {reference}.sid FROM search_reference {reference} "
        f"WHERE {reference}.resource_type = ? AND {reference}.param = ? AND ({ors}) AND {base_clause})",
        [item.param.resource_type, item.param.code, *_flatten(targets), *base_params],
    )


def _has(item: HasFilter, alias: str, base: str | None, context: Context) -> Condition:
    reference, source = context.next("r"), context.next("s")
    nested = condition(item.inner, source, base, context)
    policy = context.policy(source)
    return Condition(
        f"{alias}.resource_id IN (SELECT {reference}.target_id FROM search_reference {reference} "
        f"WHERE {reference}.resource_type = ? AND {reference}.param = ? AND {reference}.target_type = ? "
        f"AND {reference}.sid IN (SELECT {source}.sid FROM search_ids {source} "
        f"WHERE {source}.resource_type = ? AND ({nested.sql}){policy.sql}))",
        [item.source_type, item.reference.code, item.target_type, item.source_type, *nested.params, *policy.params],
    )
