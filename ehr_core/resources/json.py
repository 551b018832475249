"""Faithful FHIR JSON: parse and write without changing what the client sent.

FHIR decimals carry their precision in their text (``1.50`` is not ``1.5``, R4 §2.6.1 "decimal"), so a
float-based parser is not acceptable: every JSON number with a fraction or exponent is parsed into a
:class:`JsonDecimal`, a :class:`decimal.Decimal` that remembers the exact characters it came from, and is
written back with those characters. Strings (timestamps, base64) are never touched.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["JsonDecimal", "JsonError", "dumps", "loads"]


class JsonError(ValueError):
    """The body is not JSON, or not a JSON object where one is required."""


class JsonDecimal(Decimal):
    """A decimal number that is written back exactly as it was read."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> JsonDecimal:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __repr__(self) -> str:
        return f"JsonDecimal({self.text!r})"


_INT64 = 2**63


def _parse_int(text: str) -> int | JsonDecimal:
    value = int(text)
    # orjson writes 64-bit integers only; larger ones keep their text like any decimal.
    return JsonDecimal(text) if not -_INT64 <= value < _INT64 else value


def _reject_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonError(f"duplicate property {key!r} in a JSON object")
            seen.add(key)
    return obj


_decoder = json.JSONDecoder(
    parse_float=JsonDecimal,
    parse_int=_parse_int,
    parse_constant=_reject_constant,
    object_pairs_hook=_unique_keys,
)


def loads(data: bytes | str) -> Any:
    """Parse JSON keeping every number's text; raise :class:`JsonError` with a position on bad input."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    except UnicodeDecodeError as error:
        raise JsonError(f"body is not valid UTF-8 (byte {error.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        return _decoder.decode(text)
    except json.JSONDecodeError as error:
        raise JsonError(f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except RecursionError:
        raise JsonError("JSON nesting is too deep") from None


def _default(value: Any) -> Any:
    if isinstance(value, JsonDecimal):
        return orjson.Fragment(value.text)
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Write compact JSON (UTF-8), numbers exactly as they were read."""
    return orjson.dumps(value, default=_default)
