"""Filters to SQL: one condition on a ``search_ids`` row per filter (R4 §3.1.1.5 matching rules).

Written once with ``?`` placeholders for both SQLite and PostgreSQL. Each value table is reached by an
``IN (SELECT sid ...)`` sub-select on its ``(resource_type, param, value...)`` index; chains and
reverse chains nest the same conditions on the referenced or referring type, and (auth on) the
access policy on each resource they pass through.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from projections.db import Dialect, Tx
from projections.indexed import indexed
from projections.search.dates import MAX, MIN
from projections.search.fold import fold, prefix_upper_bound
from projections.search.index import VALUE_TABLES
from projections.search.query import ChainFilter, Filter, HasFilter, MissingFilter, SameValueFilter, ValueFilter
from projections.search.registry import SearchParameter
from projections.search.special import SpecialFilter
from projections.search.values import (
    DateValue,
    NumberValue,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    TokenValue,
    now_micros,
)

__all__ = ["Condition", "Context", "Spans", "condition", "read_spans"]


@dataclass
class Condition:
    sql: str
    params: list[Any] = field(default_factory=list)


class Context:
    """What building one search's SQL needs besides the filters: table aliases, date spans, and the access
    policy for the resources a chain or ``_has`` passes through."""

    def __init__(
        self,
        spans: dict[tuple[str, str], Spans] | None = None,
        visible: Callable[[str], Condition] | None = None,
        dialect: Dialect = "sqlite",
    ) -> None:
        self._numbers = itertools.count(1)
        #: Per (type, parameter): its date ranges' longest span and open ends (``search_date_spans``).
        self.spans = spans or {}
        #: The viewer's visibility condition on a ``search_ids`` alias (None: auth off, no policy).
        #: A chain or ``_has`` matches only through resources the viewer may see, or its result would tell
        #: the caller what a hidden resource contains (``Observation?subject:Patient.name=X``).
        self.visible = visible
        #: The database the SQL is for: a special parameter's SQL may differ (full text, R4 ``_text``).
        self.dialect: Dialect = dialect

    def policy(self, alias: str) -> Condition:
        """The access policy on ``alias`` as an extra ``AND`` (empty without a viewer)."""
        if self.visible is None:
            return Condition("")
        found = self.visible(alias)
        return Condition(f" AND {found.sql}", list(found.params))

    def next(self, prefix: str) -> str:
        return f"{prefix}{next(self._numbers)}"

    def span(self, param: SearchParameter) -> Spans:
        return self.spans.get((param.resource_type, param.code), Spans(0, False, False))


@dataclass(frozen=True)
class Spans:
    """What a date parameter's indexed ranges look like: how long at most, open at either end or not."""

    longest: int
    open_start: bool
    open_end: bool


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
        return _date_filter(alias, item.param, [list(item.values)], context.span(item.param))
    if isinstance(item, ChainFilter):
        return _chain(item, alias, base, context)
    if isinstance(item, SpecialFilter):
        return item.condition(alias, base, context)
    return _has(item, alias, base, context)


# -- plain values -----------------------------------------------------------------------------------


def _in_table(
    alias: str, table: str, param: SearchParameter, code: str, alternatives: list[Condition], negate: bool = False
) -> Condition:
    """``alias`` has (or, negated, has not) a row of ``code`` in ``table`` matching any alternative."""
    ors = " OR ".join(f"({alt.sql})" for alt in alternatives)
    params: list[Any] = [param.resource_type, code]
    for alt in alternatives:
        params += alt.params
    operator = "NOT IN" if negate else "IN"
    return Condition(
        f"{alias}.sid {operator} (SELECT sid FROM {table} WHERE resource_type = ? AND param = ? AND ({ors}))", params
    )


def _value(item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
    param, modifier = item.param, item.modifier
    if param.code == "_id":
        marks = ", ".join("?" * len(item.values))
        negation = "NOT " if modifier == "not" else ""
        return Condition(f"{alias}.resource_id {negation}IN ({marks})", list(item.values))
    if param.code == "_lastUpdated":
        alternatives = [_date(value, f"{alias}.last_updated", f"{alias}.last_updated") for value in item.values]
        return Condition(" OR ".join(f"({alt.sql})" for alt in alternatives), _flatten(alternatives))
    return FILTERS[param.type](item, alias, base, context)


ValueCondition = Callable[[ValueFilter, str, str | None, Context], Condition]
"""The condition a :class:`ValueFilter` of one parameter type puts on ``alias`` (``base``: the searched type)."""


def _token_filter(item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
    """R4 search.html#token, with ``:text``, ``:of-type`` and ``:not``."""
    param, modifier = item.param, item.modifier
    if modifier == "text":
        return _in_table(alias, "search_string", param, f"{param.code}:text", [_words(v) for v in item.values])
    if modifier == "of-type":
        return _in_table(alias, "search_token", param, f"{param.code}:of-type", [_of_type(v) for v in item.values])
    # :not (R4 §3.1.1.5.10): resources with no matching token, those with no value at all included.
    tokens = [_token(v) for v in item.values]
    return _in_table(alias, "search_token", param, param.code, tokens, negate=modifier == "not")


def _reference_filter(item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
    """R4 search.html#reference, with ``:identifier`` (searched in the token table)."""
    param = item.param
    if item.modifier == "identifier":
        return _in_table(alias, "search_token", param, f"{param.code}:identifier", [_token(v) for v in item.values])
    return _in_table(alias, _table("reference"), param, param.code, [_reference(v, base) for v in item.values])


def _date_value_filter(item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
    """R4 search.html#date."""
    return _date_filter(alias, item.param, [[value] for value in item.values], context.span(item.param))


def _string_filter(item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
    """R4 search.html#string."""
    conditions = [_string(v, item.modifier) for v in item.values]
    return _in_table(alias, _table("string"), item.param, item.param.code, conditions)


def _number_filter(item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
    """R4 search.html#number."""
    return _in_table(alias, _table("number"), item.param, item.param.code, [_number(v) for v in item.values])


def _quantity_filter(item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
    """R4 search.html#quantity."""
    return _in_table(alias, _table("quantity"), item.param, item.param.code, [_quantity(v) for v in item.values])


def _uri_filter(item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
    """R4 search.html#uri."""
    conditions = [_uri(v, item.modifier) for v in item.values]
    return _in_table(alias, _table("uri"), item.param, item.param.code, conditions)


def _table(kind: str) -> str:
    return VALUE_TABLES[kind][0]


def _flatten(conditions: Sequence[Condition]) -> list[Any]:
    return [p for c in conditions for p in c.params]


def _token(value: TokenValue) -> Condition:
    # Indexed values are bounded prefixes (projections/indexed.py): compare like with like.
    code, system = indexed(value.code), indexed(value.system)
    if code is None:
        return Condition("system = ?", [system])
    if system is None:
        return Condition("code = ?", [code])
    if system == "":
        return Condition("code = ? AND system IS NULL", [code])
    return Condition("code = ? AND system = ?", [code, system])


def _of_type(value: OfTypeValue) -> Condition:
    code = indexed(f"{value.type_code}|{value.value}")
    return Condition("code = ? AND system = ?", [code, indexed(value.type_system)])


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _prefix(folded: str) -> Condition:
    folded = indexed(folded)  # what the index holds of a longer value
    return Condition("value >= ? AND value < ?", [folded, prefix_upper_bound(folded)])


def _words(text: str) -> Condition:
    """``:text``: the text starts with the value, or one of its words does."""
    folded = fold(text)
    prefix = _prefix(folded)
    return Condition(f"({prefix.sql}) OR value LIKE ? ESCAPE '\\'", [*prefix.params, f"% {_like_escape(folded)}%"])


def _string(text: str, modifier: str | None) -> Condition:
    folded = fold(text)
    if modifier == "exact":
        return Condition("value = ? AND exact = ?", [indexed(folded), text])
    if modifier == "contains":
        return Condition("value LIKE ? ESCAPE '\\'", [f"%{_like_escape(folded)}%"])
    return _prefix(folded)


def _date(value: DateValue, low: str, high: str) -> Condition:
    """R4 §3.1.1.5.6 prefixes on ranges: search [ps, pe] against target [low, high]."""
    ps, pe = value.low, value.high
    contained = f"{low} >= ? AND {high} <= ?"
    match value.prefix:
        case "eq":
            return Condition(contained, [ps, pe])
        case "ne":
            return Condition(f"NOT ({contained})", [ps, pe])
        case "gt":
            return Condition(f"{high} > ?", [pe])
        case "lt":
            return Condition(f"{low} < ?", [ps])
        case "ge":
            return Condition(f"{high} > ? OR ({contained})", [pe, ps, pe])
        case "le":
            return Condition(f"{low} < ? OR ({contained})", [ps, ps, pe])
        case "sa":
            return Condition(f"{low} > ?", [pe])
        case "eb":
            return Condition(f"{high} < ?", [ps])
        case _:  # ap: within 10% of the distance from now (at least a day), ranges overlapping
            widen = max(abs(now_micros() - ps) // 10, 86_400_000_000)
            return Condition(f"{low} <= ? AND {high} >= ?", [min(pe + widen, MAX), max(ps - widen, MIN)])


def _low_bounds(value: DateValue, span: int) -> tuple[list[Condition], list[Condition]]:
    """Bounds on ``low`` implied by ``value`` for rows whose range is at most ``span`` long.

    A B-tree finds ``low`` in a range; a condition on ``high`` alone ("ends after X") would scan half
    the index. Knowing every finite range is at most ``span`` long, ``high > X`` gives ``low > X - span``.
    """
    ps, pe = value.low, value.high

    def after(bound: int) -> Condition:
        return Condition("low >= ?", [max(bound - span, MIN)])

    match value.prefix:
        case "eq":
            return [Condition("low >= ?", [ps])], [Condition("low <= ?", [pe])]
        case "gt":
            return [after(pe)], []
        case "ge":
            return [after(ps)], []
        case "lt" | "eb":
            return [], [Condition("low < ?", [ps])]
        case "le":
            return [], [Condition("low <= ?", [pe])]
        case "sa":
            return [Condition("low > ?", [pe])], []
        case "ap":
            widened = _date(value, "low", "high").params
            return [after(widened[1])], [Condition("low <= ?", [widened[0]])]
        case _:  # ne: no bound
            return [], []


def _date_filter(alias: str, param: SearchParameter, groups: list[list[DateValue]], spans: Spans) -> Condition:
    """Date conditions (OR of groups, AND within a group, all on one row) as index range scans.

    Finite ranges are reached through bounds on ``low``; ranges open at the start (``low`` = MIN) or
    at the end (``high`` = MAX) through their own index entries, OR-ed in only if the parameter has
    any. The exact R4 condition is checked on each row. One relation, so the planner may also probe
    it by ``sid``; with one group and no open ranges, the bounds are plain AND-ed range conditions,
    which the planner estimates well.
    """
    key = [param.resource_type, param.code]
    exact_groups = [[_date(value, "low", "high") for value in group] for group in groups]
    branches: list[Condition] = []
    for group, exact in zip(groups, exact_groups, strict=True):
        bounds: list[Condition] = []
        for value in group:
            lower, upper = _low_bounds(value, spans.longest)
            bounds += lower + upper
        params = [p for bound in bounds for p in bound.params]
        sql = " AND ".join([b.sql for b in bounds] + [f"({c.sql})" for c in exact])
        branches.append(Condition(sql, params + [p for c in exact for p in c.params]))
    if spans.open_start or spans.open_end:
        exact_sql = " OR ".join("(" + " AND ".join(f"({c.sql})" for c in group) + ")" for group in exact_groups)
        exact_params = [p for group in exact_groups for c in group for p in c.params]
        if spans.open_start:
            branches.append(Condition(f"low = ? AND ({exact_sql})", [MIN, *exact_params]))
        if spans.open_end:
            branches.append(Condition(f"high = ? AND ({exact_sql})", [MAX, *exact_params]))
    where = branches[0].sql if len(branches) == 1 else "(" + " OR ".join(f"({b.sql})" for b in branches) + ")"
    return Condition(
        f"{alias}.sid IN (SELECT sid FROM search_date WHERE resource_type = ? AND param = ? AND {where})",
        [*key, *(p for b in branches for p in b.params)],
    )


def _number(value: NumberValue) -> Condition:
    """R4 §3.1.1.5.5: ``eq`` uses the range the value's precision implies; the others the exact value."""
    v = value.value
    match value.prefix:
        case "eq":
            return Condition("low >= ? AND high < ?", [value.low, value.high])
        case "ne":
            return Condition("NOT (low >= ? AND high < ?)", [value.low, value.high])
        case "gt":
            return Condition("high > ?", [v])
        case "lt":
            return Condition("low < ?", [v])
        case "ge":
            return Condition("high >= ?", [v])
        case "le":
            return Condition("low <= ?", [v])
        case "sa":
            return Condition("low > ?", [v])
        case "eb":
            return Condition("high < ?", [v])
        case _:  # ap: within 10%
            spread = abs(v) / 10
            return Condition("low <= ? AND high >= ?", [v + spread, v - spread])


def _quantity(value: QuantityValue) -> Condition:
    number = _number(value.number)
    sql, params = f"({number.sql})", list(number.params)
    if value.system is not None:
        sql += " AND system = ?"
        params.append(value.system)
    if value.code is not None:
        if value.system is not None:
            sql += " AND code = ?"
            params.append(value.code)
        else:  # ``5.4||mg``: the code, or the human unit (R4 §3.1.1.5.8)
            sql += " AND (code = ? OR unit = ?)"
            params += [value.code, value.code]
    return Condition(sql, params)


def _reference(value: ReferenceValue, base: str | None) -> Condition:
    target_type, target_id = indexed(value.target_type), indexed(value.target_id)  # as the index holds them
    if target_type is None:
        return Condition("target_id = ?", [target_id])
    if value.base is not None:
        return Condition("target_type = ? AND target_id = ? AND base = ?", [target_type, target_id, value.base])
    if base is not None:
        return Condition(
            "target_type = ? AND target_id = ? AND (base IS NULL OR base = ?)",
            [target_type, target_id, base.rstrip("/")],
        )
    return Condition("target_type = ? AND target_id = ? AND base IS NULL", [target_type, target_id])


def _uri(value: str, modifier: str | None) -> Condition:
    if modifier == "below":
        return _prefix_exact(value)
    if modifier == "above":
        parts = value.split("/")
        prefixes = [indexed("/".join(parts[:n])) for n in range(1, len(parts) + 1) if "/".join(parts[:n])]
        marks = ", ".join("?" * len(prefixes))
        return Condition(f"value IN ({marks})", prefixes)
    return Condition("value = ?", [indexed(value)])


def _prefix_exact(text: str) -> Condition:
    text = indexed(text)
    return Condition("value >= ? AND value < ?", [text, prefix_upper_bound(text)])


# -- :missing, chains, reverse chains ---------------------------------------------------------------


def _missing(item: MissingFilter, alias: str) -> Condition:
    param = item.param
    if param.code in ("_id", "_lastUpdated"):
        return Condition("1 = 0" if item.missing else "1 = 1")
    table = VALUE_TABLES[param.type][0]
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


FILTERS: dict[str, ValueCondition] = {
    "token": _token_filter,
    "reference": _reference_filter,
    "date": _date_value_filter,
    "string": _string_filter,
    "number": _number_filter,
    "quantity": _quantity_filter,
    "uri": _uri_filter,
}
"""Each search parameter type's value condition (R4 search.html#ptypes)."""
