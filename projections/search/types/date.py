"""The ``date`` search type (R4 §3.1.1.5.6 search.html#date): ranges compared under a prefix.

"Dates are treated as ranges" (:mod:`projections.search.dates`): a ``date``/``dateTime``/``instant``
indexes as the instants it covers, a Period as start to end (an open end infinite), a Timing as "only the
outer limits". Conditions on a range's end are turned into index ranges on its start with the parameter's
longest indexed span (``search_date_spans``), see :func:`date_filter`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from projections.search.dates import MAX, MIN, date_range
from projections.search.registry import SearchParameter
from projections.search.types.base import (
    Condition,
    Context,
    IndexTable,
    Rows,
    Spans,
    ValueFilter,
    parse_values,
    split_prefix,
)

__all__ = ["DATE", "DateValue", "date_filter", "date_match", "now_micros", "parse_date"]

_DATE_TYPES = frozenset({"date", "dateTime", "instant"})


@dataclass(frozen=True)
class DateValue:
    prefix: str
    #: The searched range, inclusive microseconds (:mod:`projections.search.dates`).
    low: int
    high: int


def parse_date(text: str) -> DateValue:
    prefix, rest = split_prefix(text)
    try:
        low, high = date_range(rest)
    except ValueError:
        raise ValueError(f"not a FHIR date: {text!r} (use e.g. 2013-01-14 or 2013-01-14T10:00:00Z)") from None
    return DateValue(prefix, low, high)


def now_micros() -> int:
    return date_range(datetime.now(UTC).isoformat())[0]


# -- extraction -------------------------------------------------------------------------------------


def _safe_range(text: Any) -> tuple[int, int] | None:
    if not isinstance(text, str):
        return None
    try:
        return date_range(text)
    except ValueError:
        return None


def _dates(datatype: str, value: Any) -> Iterable[tuple[int, int]]:
    if datatype in _DATE_TYPES:
        found = _safe_range(value)
        if found:
            yield found
    elif datatype == "Period" and isinstance(value, dict):
        start, end = _safe_range(value.get("start")), _safe_range(value.get("end"))
        if start or end:
            yield (start[0] if start else MIN), (end[1] if end else MAX)
    elif datatype == "Timing" and isinstance(value, dict):
        # "Only the outer limits matter" (R4 §3.1.1.5.6): one range from the first event or bound to the last.
        ranges = [found for found in map(_safe_range, value.get("event") or ()) if found]
        repeat = value.get("repeat")
        if isinstance(repeat, dict) and isinstance(repeat.get("boundsPeriod"), dict):
            ranges += list(_dates("Period", repeat["boundsPeriod"]))
        if ranges:
            yield min(low for low, _ in ranges), max(high for _, high in ranges)


# -- SQL --------------------------------------------------------------------------------------------


def date_match(value: DateValue, low: str, high: str) -> Condition:
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
            widened = date_match(value, "low", "high").params
            return [after(widened[1])], [Condition("low <= ?", [widened[0]])]
        case _:  # ne: no bound
            return [], []


def date_filter(alias: str, param: SearchParameter, groups: list[list[DateValue]], spans: Spans) -> Condition:
    """Date conditions (OR of groups, AND within a group, all on one row) as index range scans.

    Finite ranges are reached through bounds on ``low``; ranges open at the start (``low`` = MIN) or
    at the end (``high`` = MAX) through their own index entries, OR-ed in only if the parameter has
    any. The exact R4 condition is checked on each row. One relation, so the planner may also probe
    it by ``sid``; with one group and no open ranges, the bounds are plain AND-ed range conditions,
    which the planner estimates well.
    """
    key = [param.resource_type, param.code]
    exact_groups = [[date_match(value, "low", "high") for value in group] for group in groups]
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
        f"{alias}.sid IN (SELECT sid FROM {DATE.table.name} WHERE resource_type = ? AND param = ? AND {where})",
        [*key, *(p for b in branches for p in b.params)],
    )


class DateType:
    name = "date"
    table = IndexTable(
        "search_date",
        ("low", "high"),
        "low BIGINT NOT NULL, high BIGINT NOT NULL",
        ("low, high, sid", "high, sid"),
        "resource_type, param",
    )

    def accepts(self, param: SearchParameter, modifier: str) -> bool:
        return modifier == "missing"

    def parse(self, name: str, param: SearchParameter, modifier: str | None, raw: str, base: str | None) -> ValueFilter:
        return ValueFilter(param, modifier, parse_values(name, raw, parse_date))

    def parse_value(self, text: str, base: str | None) -> Any:
        return parse_date(text)

    def extract(self, rows: Rows, code: str, datatype: str, value: Any) -> None:
        rows.date += [(code, low, high) for low, high in _dates(datatype, value)]

    def match(self, value: Any, base: str | None) -> Condition:
        return date_match(value, "low", "high")

    def condition(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        if item.param.code == "_lastUpdated":  # kept on the resource's own row (search_ids)
            alternatives = [date_match(v, f"{alias}.last_updated", f"{alias}.last_updated") for v in item.values]
            return Condition(
                " OR ".join(f"({alt.sql})" for alt in alternatives), [p for alt in alternatives for p in alt.params]
            )
        return date_filter(alias, item.param, [[value] for value in item.values], context.span(item.param))


DATE = DateType()
