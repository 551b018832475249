"""The ``quantity`` search type (R4 §3.1.1.5.8 search.html#quantity): ``[prefix]number|system|code``.

Quantity, Age, Duration, Distance, Count, SimpleQuantity and MoneyQuantity index as their value (a
point range); a ``Range`` as its low and high, with the units of the bound it has. ``Money`` (R4's
``ChargeItem.price-override``, ``Invoice.totalgross``...: quantity parameters over Money) as its value with
its currency as the code of ISO 4217 (R4 datatypes.html#Money: "currency: ISO 4217 Currency Code"), so
``40|urn:iso:std:iso:4217|EUR`` and ``40||EUR`` find it.

A UCUM quantity (system ``http://unitsofmeasure.org``) is also indexed in its canonical unit
(:mod:`ehr_core.ucum`: 70 kg is 70000 g), and a search whose system is UCUM matches on it too, its prefix
applied to the canonical values: R4 §3.1.1.5.8 "the server SHOULD ... convert ... to the canonical form",
so ``70000|http://unitsofmeasure.org|g`` finds 70 kg. Units UCUM cannot convert between (``mg/dL`` and
``mmol/L``: that needs the molar mass) have different canonical units and match only by their own code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ehr_core.ucum import UCUM, Canonical, canonical
from projections.search.registry import SearchParameter
from projections.search.types.base import (
    Condition,
    Context,
    IndexTable,
    Rows,
    ValueFilter,
    in_table,
    parse_values,
    split_unescaped,
    text_or_none,
    unescape,
)
from projections.search.types.number import NumberValue, finite, number_match, parse_number, range_bounds

__all__ = ["QUANTITY", "QuantityValue", "parse_quantity"]

_QUANTITY_TYPES = frozenset({"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"})
#: The system of Money.currency's codes (R4 valueset-currencies: ``urn:iso:std:iso:4217``).
ISO_4217 = "urn:iso:std:iso:4217"


@dataclass(frozen=True)
class QuantityValue:
    number: NumberValue
    #: None: any system; otherwise the unit system (``http://unitsofmeasure.org``).
    system: str | None
    #: None: any unit; otherwise matched against Quantity.code, or Quantity.unit when no system is given.
    code: str | None


def parse_quantity(text: str) -> QuantityValue:
    parts = split_unescaped(text, "|")
    if len(parts) not in (1, 3):
        raise ValueError(f"a quantity is [prefix][number]|[system]|[code], got {text!r}")
    number = parse_number(parts[0])
    if len(parts) == 1:
        return QuantityValue(number, None, None)
    return QuantityValue(number, unescape(parts[1]) or None, unescape(parts[2]) or None)


def _units(quantity: Any) -> tuple[str | None, str | None, str | None]:
    if not isinstance(quantity, dict):
        return None, None, None
    return (
        text_or_none(quantity.get("system")),
        text_or_none(quantity.get("code")),
        text_or_none(quantity.get("unit")),
    )


def _ucum(system: str | None, code: str | None) -> Canonical | None:
    return canonical(code) if system == UCUM and code is not None else None


def _row(
    code: str, units: tuple[str | None, str | None, str | None], low: float, high: float
) -> tuple[str, str | None, str | None, str | None, float, float, str | None, float | None, float | None]:
    """An index row: the value as given, then in its canonical UCUM unit (None when it has none)."""
    unit = _ucum(units[0], units[1])
    if unit is None:
        return (code, *units, low, high, None, None, None)
    return (code, *units, low, high, unit.unit, unit.value(low), unit.value(high))


def _canonical(number: NumberValue, unit: Canonical) -> Condition:
    """``number`` (in ``unit``) against the canonical columns: the bounds converted, so every prefix keeps
    its meaning; ``ap``'s 10% is taken of the value as asked, then converted (a temperature's offset
    would otherwise widen it)."""
    v = number.value
    if number.prefix == "ap":
        spread = abs(v) / 10
        return Condition("canonical_low <= ? AND canonical_high >= ?", [unit.value(v + spread), unit.value(v - spread)])
    converted = NumberValue(number.prefix, unit.value(v), unit.value(number.low), unit.value(number.high))
    return number_match(converted, "canonical_low", "canonical_high")


def _quantity(value: QuantityValue) -> Condition:
    exact = _exact(value)
    unit = _ucum(value.system, value.code)
    if unit is None:
        return exact
    found = _canonical(value.number, unit)
    return Condition(f"({exact.sql}) OR (canonical = ? AND {found.sql})", [*exact.params, unit.unit, *found.params])


def _exact(value: QuantityValue) -> Condition:
    number = number_match(value.number)
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


class QuantityType:
    name = "quantity"
    table = IndexTable(
        "search_quantity",
        ("system", "code", "unit", "low", "high", "canonical", "canonical_low", "canonical_high"),
        "system {text}, code {text}, unit {text}, low {real} NOT NULL, high {real} NOT NULL, "
        "canonical {text}, canonical_low {real}, canonical_high {real}",
        ("low, high", "canonical, canonical_low, canonical_high"),
        "resource_type, param, code",
    )

    def accepts(self, param: SearchParameter, modifier: str) -> bool:
        return modifier == "missing"

    def parse(self, name: str, param: SearchParameter, modifier: str | None, raw: str, base: str | None) -> ValueFilter:
        return ValueFilter(param, modifier, parse_values(name, raw, parse_quantity))

    def parse_value(self, text: str, base: str | None) -> Any:
        return parse_quantity(text)

    def extract(self, rows: Rows, code: str, datatype: str, value: Any) -> None:
        if not isinstance(value, dict):
            return
        if datatype in _QUANTITY_TYPES:
            number = finite(value.get("value"))
            if number is not None:
                rows.quantity.append(_row(code, _units(value), number, number))
        elif datatype == "Range":
            bounds = range_bounds(value)
            if bounds is None:
                return
            low = value.get("low")
            has_low = isinstance(low, dict) and finite(low.get("value")) is not None
            rows.quantity.append(_row(code, _units(low if has_low else value.get("high")), *bounds))
        elif datatype == "Money":
            number, currency = finite(value.get("value")), text_or_none(value.get("currency"))
            if number is not None:
                rows.quantity.append(_row(code, (ISO_4217 if currency else None, currency, None), number, number))

    def match(self, value: Any, base: str | None) -> Condition:
        return _quantity(value)

    def condition(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        return in_table(alias, self.table.name, item.param, item.param.code, [_quantity(v) for v in item.values])


QUANTITY = QuantityType()
