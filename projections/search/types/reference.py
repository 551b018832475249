"""The ``reference`` search type (R4 §3.1.1.5.9 search.html#reference), with ``:identifier`` and ``:Type``.

A Reference indexes as its literal ``Type/id`` (and base URL when absolute, see
:mod:`projections.search.references`), a ``uri``/``canonical`` as the whole text; ``Reference.identifier``
goes to the token table under ``code:identifier``. Chains and ``_has`` (``projections.search.query``)
walk these rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ehr_core.resources.types import is_supported
from projections.indexed import indexed
from projections.search.references import parse_reference
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
from projections.search.types.token import TOKEN, add_identifier_token, parse_token, token_match
from projections.search.types.uri import URI_TYPES

__all__ = ["REFERENCE", "ReferenceValue", "parse_reference_value"]


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


def _is_type_modifier(param: SearchParameter, modifier: str) -> bool:
    """``subject:Patient``: the type modifier on a reference (R4 §3.1.1.5.9)."""
    return modifier in param.targets or ("Resource" in param.targets and is_supported(modifier))


def _bound(row: tuple[Any, ...]) -> tuple[Any, ...]:
    param, target_type, target_id, base = row
    return (param, indexed(target_type), indexed(target_id), base)


class ReferenceType:
    name = "reference"
    table = IndexTable(
        "search_reference",
        ("target_type", "target_id", "base"),
        "target_type {text}, target_id {text} NOT NULL, base {text}, target_sid BIGINT",
        ("target_id, target_type, sid",),
        "resource_type, param, target_type",
        _bound,
        # The target's key when it is stored (projections/search/targets.py).
        filled=("target_sid",),
    )
    _modifiers = frozenset({"identifier", "missing"})

    def accepts(self, param: SearchParameter, modifier: str) -> bool:
        return modifier in self._modifiers or _is_type_modifier(param, modifier)

    def parse(self, name: str, param: SearchParameter, modifier: str | None, raw: str, base: str | None) -> ValueFilter:
        if modifier == "identifier":
            return ValueFilter(param, modifier, parse_values(name, raw, parse_token))
        values = parse_values(name, raw, lambda item: parse_reference_value(item, base))
        if modifier is None:
            return ValueFilter(param, modifier, values)
        # ``subject:Patient=1`` is ``subject=Patient/1``.
        typed = tuple(ReferenceValue(modifier, v.target_id, v.base) if v.target_type is None else v for v in values)
        if any(v.target_type != modifier for v in typed):
            raise invalid(name, f"the values must be {modifier} references")
        return ValueFilter(param, None, typed)

    def parse_value(self, text: str, base: str | None) -> Any:
        return parse_reference_value(text, base)

    def extract(self, rows: Rows, code: str, datatype: str, value: Any) -> None:
        if datatype == "Reference" and isinstance(value, dict):
            literal = value.get("reference")
            if isinstance(literal, str) and not literal.startswith("#"):
                target_type, target_id, url_base = parse_reference(literal)
                rows.reference.append((code, target_type, target_id, url_base))
            add_identifier_token(rows, f"{code}:identifier", value.get("identifier"))
        elif datatype in URI_TYPES and isinstance(value, str):
            target_type, target_id, url_base = parse_reference(value)
            rows.reference.append((code, target_type, target_id, url_base))

    def match(self, value: Any, base: str | None) -> Condition:
        return _reference(value, base)

    def condition(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        param = item.param
        if item.modifier == "identifier":
            tokens = [token_match(v) for v in item.values]
            return in_table(alias, TOKEN.table.name, param, f"{param.code}:identifier", tokens)
        return in_table(alias, self.table.name, param, param.code, [_reference(v, base) for v in item.values])


REFERENCE = ReferenceType()
