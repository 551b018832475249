"""The ``number`` search type (R4 §3.1.1.5.5 search.html#number), with the prefixes of §3.1.1.5.6.

A value's precision implies a range (``100`` is 99.5 ≤ x < 100.5) that ``eq`` uses; a ``Range`` element
indexes as its low and high (an open end infinite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from projections.search.registry import SearchParameter
from projections.search.types.base import (
    Condition,
    Context,
    IndexTable,
    Rows,
    ValueFilter,
    in_table,
    parse_values,
    split_prefix,
)

__all__ = ["NUMBER", "NumberValue", "finite", "number_match", "parse_number", "range_bounds"]

_NUMBER_TYPES = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})


@dataclass(frozen=True)
class NumberValue:
    prefix: str
    value: float
    #: The range the value's precision implies (R4 §3.1.1.5.5: ``100`` is 99.5 ≤ x < 100.5).
    low: float
    high: float


def _number(text: str, prefix: str) -> NumberValue:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return NumberValue(prefix, float(number), float(number - half), float(number + half))


def parse_number(text: str) -> NumberValue:
    prefix, rest = split_prefix(text)
    return _number(rest, prefix)


def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def range_bounds(value: dict[str, Any]) -> tuple[float, float] | None:
    """A ``Range``'s (low, high), an open end infinite; None when it has neither."""
    low, high = value.get("low"), value.get("high")
    low_value = finite(low.get("value")) if isinstance(low, dict) else None
    high_value = finite(high.get("value")) if isinstance(high, dict) else None
    if low_value is None and high_value is None:
        return None
    return (
        low_value if low_value is not None else -math.inf,
        high_value if high_value is not None else math.inf,
    )


def number_match(value: NumberValue, low: str = "low", high: str = "high") -> Condition:
    """R4 §3.1.1.5.5: ``eq`` uses the range the value's precision implies; the others the exact value.
    ``low``/``high``: the columns of the indexed range (a quantity's canonical ones, types/quantity.py)."""
    v = value.value
    match value.prefix:
        case "eq":
            return Condition(f"{low} >= ? AND {high} < ?", [value.low, value.high])
        case "ne":
            return Condition(f"NOT ({low} >= ? AND {high} < ?)", [value.low, value.high])
        case "gt":
            return Condition(f"{high} > ?", [v])
        case "lt":
            return Condition(f"{low} < ?", [v])
        case "ge":
            return Condition(f"{high} >= ?", [v])
        case "le":
            return Condition(f"{low} <= ?", [v])
        case "sa":
            return Condition(f"{low} > ?", [v])
        case "eb":
            return Condition(f"{high} < ?", [v])
        case _:  # ap: within 10%
            spread = abs(v) / 10
            return Condition(f"{low} <= ? AND {high} >= ?", [v + spread, v - spread])


class NumberType:
    name = "number"
    table = IndexTable(
        "search_number",
        ("low", "high"),
        "low {real} NOT NULL, high {real} NOT NULL",
        ("low, high",),
        "resource_type, param",
    )

    def accepts(self, param: SearchParameter, modifier: str) -> bool:
        return modifier == "missing"

    def parse(self, name: str, param: SearchParameter, modifier: str | None, raw: str, base: str | None) -> ValueFilter:
        return ValueFilter(param, modifier, parse_values(name, raw, parse_number))

    def parse_value(self, text: str, base: str | None) -> Any:
        return parse_number(text)

    def extract(self, rows: Rows, code: str, datatype: str, value: Any) -> None:
        if datatype in _NUMBER_TYPES:
            number = finite(value)
            if number is not None:
                rows.number.append((code, number, number))
        elif datatype == "Range" and isinstance(value, dict):
            bounds = range_bounds(value)
            if bounds is not None:
                rows.number.append((code, *bounds))

    def match(self, value: Any, base: str | None) -> Condition:
        return number_match(value)

    def condition(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        return in_table(alias, self.table.name, item.param, item.param.code, [number_match(v) for v in item.values])


NUMBER = NumberType()
