"""The ``uri`` search type (R4 §3.1.1.5.11 search.html#uri), with ``:below`` and ``:above``."""

from __future__ import annotations

from typing import Any

from projections.indexed import indexed
from projections.search.fold import prefix_upper_bound
from projections.search.registry import SearchParameter
from projections.search.types.base import Condition, Context, IndexTable, Rows, ValueFilter, in_table, unescape
from projections.search.types.string import parse_text

__all__ = ["URI", "URI_TYPES"]

URI_TYPES = frozenset({"uri", "url", "canonical", "oid", "uuid"})


def _uri(value: str, modifier: str | None) -> Condition:
    if modifier == "below":
        text = indexed(value)
        return Condition("value >= ? AND value < ?", [text, prefix_upper_bound(text)])
    if modifier == "above":
        parts = value.split("/")
        prefixes = [indexed("/".join(parts[:n])) for n in range(1, len(parts) + 1) if "/".join(parts[:n])]
        marks = ", ".join("?" * len(prefixes))
        return Condition(f"value IN ({marks})", prefixes)
    return Condition("value = ?", [indexed(value)])


def _bound(row: tuple[Any, ...]) -> tuple[Any, ...]:
    param, value = row
    return (param, indexed(value))


class UriType:
    name = "uri"
    table = IndexTable(
        "search_uri", ("value",), "value {text} NOT NULL", ("value, sid",), "resource_type, param, value", _bound
    )
    _modifiers = frozenset({"below", "above", "missing"})

    def accepts(self, param: SearchParameter, modifier: str) -> bool:
        return modifier in self._modifiers

    def parse(self, name: str, param: SearchParameter, modifier: str | None, raw: str, base: str | None) -> ValueFilter:
        return ValueFilter(param, modifier, parse_text(name, raw))

    def parse_value(self, text: str, base: str | None) -> Any:
        value = unescape(text)
        if not value:
            raise ValueError("an empty uri matches nothing")
        return value

    def extract(self, rows: Rows, code: str, datatype: str, value: Any) -> None:
        if datatype in URI_TYPES and isinstance(value, str):
            rows.uri.append((code, value))

    def match(self, value: Any, base: str | None) -> Condition:
        return _uri(value, None)

    def condition(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        conditions = [_uri(v, item.modifier) for v in item.values]
        return in_table(alias, self.table.name, item.param, item.param.code, conditions)


URI = UriType()
