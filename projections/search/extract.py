"""Index values from a resource, per parameter type (R4 §3.1.1.5 "Search Parameter Types").

Each parameter's routes reach typed values; each FHIR data type maps to index rows as the spec's
tables say: a CodeableConcept gives one token per coding (R4 §3.1.1.5.10), a HumanName one string per
part (§3.1.1.5.7), a Period one date range (§3.1.1.5.6), a Reference its ``Type/id`` (§3.1.1.5.9).

Derived rows go under a suffixed parameter code, so modifiers are plain lookups:
``code:text`` (strings: ``Coding.display``, ``CodeableConcept.text``, ``Identifier.type.text``),
``identifier:of-type`` (tokens ``type-system | type-code|value``), ``subject:identifier`` (tokens of
``Reference.identifier``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from projections.search.dates import MAX, MIN, date_range
from projections.search.fold import fold
from projections.search.paths import Route, walk
from projections.search.references import parse_reference
from projections.search.registry import SearchParameter, parameters

__all__ = ["MAX_STRING", "Rows", "extract"]

#: Indexed strings are cut to this many characters (a B-tree entry must stay small; prefix search
#: is unaffected for shorter prefixes, ``:contains`` sees only this much).
MAX_STRING = 256

_QUANTITY_TYPES = frozenset({"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"})
_NUMBER_TYPES = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})
_URI_TYPES = frozenset({"uri", "url", "canonical", "oid", "uuid"})
_TOKEN_PRIMITIVES = frozenset({"code", "id", "string", "uri", "url", "canonical", "oid", "uuid", "markdown"})
_STRING_PRIMITIVES = frozenset({"string", "markdown", "code", "id", "uri", "url"})
_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


@dataclass
class Rows:
    """Index rows of one resource, by table; the resource's key is added by the index."""

    token: list[tuple[str, str | None, str]] = field(default_factory=list)
    string: list[tuple[str, str, str]] = field(default_factory=list)
    date: list[tuple[str, int, int]] = field(default_factory=list)
    number: list[tuple[str, float, float]] = field(default_factory=list)
    quantity: list[tuple[str, str | None, str | None, str | None, float, float]] = field(default_factory=list)
    reference: list[tuple[str, str | None, str, str | None]] = field(default_factory=list)
    uri: list[tuple[str, str]] = field(default_factory=list)

    def deduplicated(self) -> Rows:
        return Rows(*(list(dict.fromkeys(getattr(self, name))) for name in _TABLE_FIELDS))


_TABLE_FIELDS = ("token", "string", "date", "number", "quantity", "reference", "uri")


def extract(resource: dict[str, Any]) -> Rows:
    """Every index row of ``resource`` (its ``resourceType`` picks the parameters)."""
    rows = Rows()
    for param in parameters(str(resource.get("resourceType"))).values():
        if param.code in ("_id", "_lastUpdated"):
            continue  # kept on the resource's own index row (search_ids)
        if param.special:
            _deceased(rows, param, resource)
            continue
        for route in param.routes:
            for value in walk(resource, route):
                _add(rows, param, route, value)
    return rows.deduplicated()


Extractor = Callable[[Rows, str, str, Any], None]
"""Adds the index rows of one value (``rows``, parameter code, the value's FHIR datatype, the value)."""


def _add(rows: Rows, param: SearchParameter, route: Route, value: Any) -> None:
    extractor = EXTRACTORS.get(param.type)
    if extractor is not None:
        extractor(rows, param.code, route.datatype, value)


# -- token (R4 §3.1.1.5.10) -------------------------------------------------------------------------


def _coding(rows: Rows, code: str, coding: Any) -> None:
    if not isinstance(coding, dict):
        return
    if isinstance(coding.get("code"), str):
        rows.token.append((code, _text_or_none(coding.get("system")), coding["code"]))
    if isinstance(coding.get("display"), str):
        _string(rows, f"{code}:text", coding["display"])


def _token(rows: Rows, code: str, datatype: str, value: Any) -> None:
    if datatype == "Coding":
        _coding(rows, code, value)
    elif datatype == "CodeableConcept" and isinstance(value, dict):
        for coding in value.get("coding") or ():
            _coding(rows, code, coding)
        if isinstance(value.get("text"), str):
            _string(rows, f"{code}:text", value["text"])
    elif datatype == "Identifier" and isinstance(value, dict):
        _identifier(rows, code, value)
    elif datatype == "ContactPoint" and isinstance(value, dict):
        if isinstance(value.get("value"), str):
            rows.token.append((code, None, value["value"]))
    elif datatype == "boolean" and isinstance(value, bool):
        rows.token.append((code, None, "true" if value else "false"))
    elif datatype in _TOKEN_PRIMITIVES and isinstance(value, str):
        rows.token.append((code, None, value))


def _identifier(rows: Rows, code: str, identifier: dict[str, Any]) -> None:
    value = identifier.get("value")
    if isinstance(value, str):
        rows.token.append((code, _text_or_none(identifier.get("system")), value))
    kind = identifier.get("type")
    if not isinstance(kind, dict):
        return
    if isinstance(value, str):
        # :of-type (R4 §3.1.1.5.10): type-system|type-code|value, stored as (type-system, "type-code|value").
        for coding in kind.get("coding") or ():
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                rows.token.append((f"{code}:of-type", _text_or_none(coding.get("system")), f"{coding['code']}|{value}"))
    if isinstance(kind.get("text"), str):
        _string(rows, f"{code}:text", kind["text"])


def _deceased(rows: Rows, param: SearchParameter, resource: dict[str, Any]) -> None:
    """``Patient.deceased.exists() and Patient.deceased != false``."""
    deceased = resource.get("deceasedBoolean") is True or "deceasedDateTime" in resource
    rows.token.append((param.code, None, "true" if deceased else "false"))


# -- string (R4 §3.1.1.5.7) -------------------------------------------------------------------------


def _strings(datatype: str, value: Any) -> Iterable[str]:
    if datatype in _STRING_PRIMITIVES and isinstance(value, str):
        yield value
    elif datatype in ("HumanName", "Address") and isinstance(value, dict):
        for part in _NAME_PARTS if datatype == "HumanName" else _ADDRESS_PARTS:
            item = value.get(part)
            for text in item if isinstance(item, list) else [item]:
                if isinstance(text, str):
                    yield text


def _string(rows: Rows, code: str, text: str) -> None:
    folded = fold(text)[:MAX_STRING]
    if folded:
        rows.string.append((code, folded, text[: MAX_STRING * 4]))


# -- date (R4 §3.1.1.5.6) ---------------------------------------------------------------------------


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


# -- reference (R4 §3.1.1.5.9) ----------------------------------------------------------------------


def _reference(rows: Rows, code: str, datatype: str, value: Any) -> None:
    if datatype == "Reference" and isinstance(value, dict):
        literal = value.get("reference")
        if isinstance(literal, str) and not literal.startswith("#"):
            target_type, target_id, base = parse_reference(literal)
            rows.reference.append((code, target_type, target_id, base))
        identifier = value.get("identifier")
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            rows.token.append((f"{code}:identifier", _text_or_none(identifier.get("system")), identifier["value"]))
    elif datatype in _URI_TYPES and isinstance(value, str):
        target_type, target_id, base = parse_reference(value)
        rows.reference.append((code, target_type, target_id, base))


# -- quantity and number (R4 §3.1.1.5.8, §3.1.1.5.5) ------------------------------------------------


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _quantity(rows: Rows, code: str, datatype: str, value: Any) -> None:
    if not isinstance(value, dict):
        return
    if datatype in _QUANTITY_TYPES:
        number = _float(value.get("value"))
        if number is not None:
            rows.quantity.append((code, *_units(value), number, number))
    elif datatype == "Range":
        low, high = value.get("low"), value.get("high")
        low_value = _float(low.get("value")) if isinstance(low, dict) else None
        high_value = _float(high.get("value")) if isinstance(high, dict) else None
        if low_value is None and high_value is None:
            return
        units = _units(low if isinstance(low, dict) and low_value is not None else high)
        rows.quantity.append(
            (
                code,
                *units,
                low_value if low_value is not None else -math.inf,
                high_value if high_value is not None else math.inf,
            )
        )


def _units(quantity: Any) -> tuple[str | None, str | None, str | None]:
    if not isinstance(quantity, dict):
        return None, None, None
    return (
        _text_or_none(quantity.get("system")),
        _text_or_none(quantity.get("code")),
        _text_or_none(quantity.get("unit")),
    )


def _number(rows: Rows, code: str, datatype: str, value: Any) -> None:
    if datatype in _NUMBER_TYPES:
        number = _float(value)
        if number is not None:
            rows.number.append((code, number, number))
    elif datatype == "Range" and isinstance(value, dict):
        low, high = value.get("low"), value.get("high")
        low_value = _float(low.get("value")) if isinstance(low, dict) else None
        high_value = _float(high.get("value")) if isinstance(high, dict) else None
        if low_value is not None or high_value is not None:
            rows.number.append(
                (
                    code,
                    low_value if low_value is not None else -math.inf,
                    high_value if high_value is not None else math.inf,
                )
            )


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# -- the extraction of each parameter type ---------------------------------------------------------


def _add_strings(rows: Rows, code: str, datatype: str, value: Any) -> None:
    """R4 search.html#string."""
    for text in _strings(datatype, value):
        _string(rows, code, text)


def _add_dates(rows: Rows, code: str, datatype: str, value: Any) -> None:
    """R4 search.html#date."""
    rows.date += [(code, low, high) for low, high in _dates(datatype, value)]


def _add_uri(rows: Rows, code: str, datatype: str, value: Any) -> None:
    """R4 search.html#uri."""
    if datatype in _URI_TYPES and isinstance(value, str):
        rows.uri.append((code, value))


EXTRACTORS: dict[str, Extractor] = {
    "token": _token,
    "string": _add_strings,
    "date": _add_dates,
    "reference": _reference,
    "quantity": _quantity,
    "number": _number,
    "uri": _add_uri,
}
"""Each search parameter type's extraction (R4 search.html#ptypes); a type missing here indexes nothing."""
