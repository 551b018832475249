"""Parsing search values by parameter type (R4 §3.1.1.5 "Search Parameter Types", §3.1.1.6 escaping).

Each parser takes one value (already split on unescaped commas) and raises ``ValueError`` with a
message for the client when the value is malformed; :mod:`projections.search.query` turns that into
a 400 OperationOutcome naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from projections.search.dates import date_range
from projections.search.references import parse_reference

__all__ = [
    "PREFIXES",
    "DateValue",
    "NumberValue",
    "OfTypeValue",
    "QuantityValue",
    "ReferenceValue",
    "TokenValue",
    "parse_date",
    "parse_number",
    "parse_of_type",
    "parse_quantity",
    "parse_reference_value",
    "parse_token",
    "split_unescaped",
    "unescape",
]

#: R4 §3.1.1.5.6 prefixes (for number, date and quantity).
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def split_unescaped(text: str, separator: str) -> list[str]:
    """Split at ``separator`` not preceded by a backslash; escapes are kept for :func:`unescape`."""
    parts, current, index = [], [], 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    r"""``\,`` ``\|`` ``\$`` ``\\`` → the character itself."""
    out, index = [], 0
    while index < len(text):
        if text[index] == "\\" and index + 1 < len(text):
            out.append(text[index + 1])
            index += 2
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


# -- token ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenValue:
    """``system|code``: ``system`` None = any system, "" = no system (``|code``); ``code`` None = any code."""

    system: str | None
    code: str | None


def parse_token(text: str) -> TokenValue:
    parts = split_unescaped(text, "|")
    if len(parts) == 1:
        if not parts[0]:
            raise ValueError("a token needs a code")
        return TokenValue(None, unescape(parts[0]))
    if len(parts) != 2:
        raise ValueError(f"a token is [system]|[code], got {text!r}")
    system, code = unescape(parts[0]), unescape(parts[1])
    if not system and not code:
        raise ValueError("a token needs a system or a code")
    return TokenValue(system, code or None)


@dataclass(frozen=True)
class OfTypeValue:
    """``:of-type``: ``type-system|type-code|value`` (R4 §3.1.1.5.10)."""

    type_system: str
    type_code: str
    value: str


def parse_of_type(text: str) -> OfTypeValue:
    parts = [unescape(part) for part in split_unescaped(text, "|")]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f":of-type takes [type system]|[type code]|[value], got {text!r}")
    return OfTypeValue(*parts)


# -- prefixes, numbers, dates, quantities ------------------------------------------------------------


def _prefix(text: str) -> tuple[str, str]:
    if len(text) > 2 and text[:2].isalpha() and text[:2].islower():
        if text[:2] not in PREFIXES:
            raise ValueError(f"unknown prefix {text[:2]!r} (use one of {', '.join(PREFIXES)})")
        return text[:2], text[2:]
    return "eq", text


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
    prefix, rest = _prefix(text)
    return _number(rest, prefix)


@dataclass(frozen=True)
class DateValue:
    prefix: str
    #: The searched range, inclusive microseconds (:mod:`projections.search.dates`).
    low: int
    high: int


def parse_date(text: str) -> DateValue:
    prefix, rest = _prefix(text)
    try:
        low, high = date_range(rest)
    except ValueError:
        raise ValueError(f"not a FHIR date: {text!r} (use e.g. 2013-01-14 or 2013-01-14T10:00:00Z)") from None
    return DateValue(prefix, low, high)


def now_micros() -> int:
    return date_range(datetime.now(UTC).isoformat())[0]


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


# -- reference --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceValue:
    """A searched reference: type (None: any the parameter allows), id (or a whole URL), base URL."""

    target_type: str | None
    target_id: str
    base: str | None


def parse_reference_value(text: str, base: str | None) -> ReferenceValue:
    """``Patient/1``, ``1``, or an absolute URL (our own base makes it relative)."""
    value = unescape(text).strip()
    if not value:
        raise ValueError("a reference needs a value")
    if base and value.startswith(base.rstrip("/") + "/"):
        value = value[len(base.rstrip("/")) + 1 :]
    target_type, target_id, url_base = parse_reference(value)
    return ReferenceValue(target_type, target_id, url_base)
