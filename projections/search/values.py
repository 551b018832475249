"""Parsing search values by parameter type (R4 §3.1.1.5 "Search Parameter Types", §3.1.1.6 escaping).

Each type's values are parsed by its own module in :mod:`projections.search.types`; this module names
them together for callers that parse a value without a parameter (each parser raises ``ValueError`` with
a message for the client when the value is malformed).
"""

from __future__ import annotations

from projections.search.types.base import PREFIXES, split_unescaped, unescape
from projections.search.types.date import DateValue, now_micros, parse_date
from projections.search.types.number import NumberValue, parse_number
from projections.search.types.quantity import QuantityValue, parse_quantity
from projections.search.types.reference import ReferenceValue, parse_reference_value
from projections.search.types.token import OfTypeValue, TokenValue, parse_of_type, parse_token

__all__ = [
    "PREFIXES",
    "DateValue",
    "NumberValue",
    "OfTypeValue",
    "QuantityValue",
    "ReferenceValue",
    "TokenValue",
    "now_micros",
    "parse_date",
    "parse_number",
    "parse_of_type",
    "parse_quantity",
    "parse_reference_value",
    "parse_token",
    "split_unescaped",
    "unescape",
]
