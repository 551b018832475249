"""The ``string`` search type (R4 §3.1.1.5.7 search.html#string), with ``:exact`` and ``:contains``.

"By default, a field matches a string query if the value of the field equals or starts with the supplied
parameter value, after both have been normalized by case and accent": both sides go through
:func:`projections.search.fold.fold`, and a prefix is an index range ``[value, value + TOP)``. A HumanName
gives one string per part, an Address one per line and part.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from projections.indexed import indexed
from projections.search.fold import fold, prefix_upper_bound
from projections.search.registry import SearchParameter
from projections.search.types.base import (
    Condition,
    Context,
    IndexTable,
    Rows,
    ValueFilter,
    in_table,
    invalid,
    parse_values,
    unescape,
)

__all__ = ["MAX_STRING", "STRING", "add_string", "prefix", "words"]

#: Indexed strings are cut to this many characters (a B-tree entry must stay small; prefix search
#: is unaffected for shorter prefixes, ``:contains`` sees only this much).
MAX_STRING = 256

_STRING_PRIMITIVES = frozenset({"string", "markdown", "code", "id", "uri", "url"})
_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def add_string(rows: Rows, code: str, text: str) -> None:
    """One string row: the folded value (searched) and the text as written (``:exact``)."""
    folded = fold(text)[:MAX_STRING]
    if folded:
        rows.string.append((code, folded, text[: MAX_STRING * 4]))


def _strings(datatype: str, value: Any) -> Iterable[str]:
    if datatype in _STRING_PRIMITIVES and isinstance(value, str):
        yield value
    elif datatype in ("HumanName", "Address") and isinstance(value, dict):
        for part in _NAME_PARTS if datatype == "HumanName" else _ADDRESS_PARTS:
            item = value.get(part)
            for text in item if isinstance(item, list) else [item]:
                if isinstance(text, str):
                    yield text


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def prefix(folded: str) -> Condition:
    folded = indexed(folded)  # what the index holds of a longer value
    return Condition("value >= ? AND value < ?", [folded, prefix_upper_bound(folded)])


def words(text: str) -> Condition:
    """``:text``: the text starts with the value, or one of its words does."""
    folded = fold(text)
    start = prefix(folded)
    return Condition(f"({start.sql}) OR value LIKE ? ESCAPE '\\'", [*start.params, f"% {like_escape(folded)}%"])


def _string(text: str, modifier: str | None) -> Condition:
    folded = fold(text)
    if modifier == "exact":
        return Condition("value = ? AND exact = ?", [indexed(folded), text])
    if modifier == "contains":
        return Condition("value LIKE ? ESCAPE '\\'", [f"%{like_escape(folded)}%"])
    return prefix(folded)


def parse_text(name: str, raw: str) -> tuple[str, ...]:
    """Unescaped alternatives; an empty one is refused (it would match everything, or nothing)."""
    values = parse_values(name, raw, unescape)
    if any(not value for value in values):
        raise invalid(name, "an empty value matches nothing; leave the parameter out")
    return values


def _bound(row: tuple[Any, ...]) -> tuple[Any, ...]:
    param, value, exact = row
    return (param, indexed(value), exact)  # ``exact`` stays whole (not indexed)


class StringType:
    name = "string"
    table = IndexTable(
        "search_string",
        ("value", "exact"),
        "value {text} NOT NULL, exact TEXT NOT NULL",
        ("value, sid",),
        "resource_type, param, value",
        _bound,
    )
    _modifiers = frozenset({"exact", "contains", "missing"})

    def accepts(self, param: SearchParameter, modifier: str) -> bool:
        return modifier in self._modifiers

    def parse(self, name: str, param: SearchParameter, modifier: str | None, raw: str, base: str | None) -> ValueFilter:
        return ValueFilter(param, modifier, parse_text(name, raw))

    def parse_value(self, text: str, base: str | None) -> Any:
        value = unescape(text)
        if not value:
            raise ValueError("an empty string matches nothing")
        return value

    def extract(self, rows: Rows, code: str, datatype: str, value: Any) -> None:
        for text in _strings(datatype, value):
            add_string(rows, code, text)

    def match(self, value: Any, base: str | None) -> Condition:
        return _string(value, None)

    def condition(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        conditions = [_string(v, item.modifier) for v in item.values]
        return in_table(alias, self.table.name, item.param, item.param.code, conditions)


STRING = StringType()
