"""The ``token`` search type (R4 §3.1.1.5.10 search.html#token), with ``:not``, ``:text``, ``:of-type``, and the
terminology modifiers ``:in``, ``:not-in``, ``:above`` and ``:below``.

A CodeableConcept gives one token per coding, an Identifier ``system|value``, a ContactPoint its value,
a boolean ``true``/``false``. Derived rows go under a suffixed parameter code, so modifiers are plain
lookups: ``code:text`` (strings: ``Coding.display``, ``CodeableConcept.text``, ``Identifier.type.text``)
and ``identifier:of-type`` (tokens ``type-system | type-code|value``).

The terminology modifiers turn into plain lookups too: when the search runs, the terminology store
(:mod:`projections.terminology.codes`, through :attr:`Context.terminology`) expands the value set (``:in``,
``:not-in``) or walks the code system's hierarchy (``:below``: the code and its descendants; ``:above``: the
code and its ancestors), and the SQL matches the ``(system, code)`` pairs found, grouped per system as
``system = ? AND code IN (...)`` (the same text on SQLite and PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ehr_core.errors import Issue, Unprocessable
from projections.indexed import indexed
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
    split_unescaped,
    text_or_none,
    unescape,
)
from projections.search.types.string import STRING, add_string, words

__all__ = [
    "TERMINOLOGY_MODIFIERS",
    "TOKEN",
    "OfTypeValue",
    "TokenValue",
    "parse_of_type",
    "parse_subsumption",
    "parse_token",
    "token_match",
]

#: The modifiers whose matches the terminology decides (R4 search.html#token).
TERMINOLOGY_MODIFIERS = frozenset({"in", "not-in", "above", "below"})

_TOKEN_PRIMITIVES = frozenset({"code", "id", "string", "uri", "url", "canonical", "oid", "uuid", "markdown"})


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


def parse_subsumption(text: str) -> TokenValue:
    """``:above``/``:below`` take ``[system]|[code]`` (R4 search.html#token): a hierarchy is a code system's."""
    value = parse_token(text)
    if not value.system or value.code is None:
        raise ValueError(f":above and :below take [system]|[code], both given, got {text!r}")
    return value


def parse_value_set(text: str) -> str:
    """``:in``/``:not-in`` take a value set's canonical url or a reference to it (``ValueSet/[id]``)."""
    reference = unescape(text).strip()
    if not reference:
        raise ValueError(":in and :not-in take a value set (its url, or ValueSet/[id])")
    return reference


# -- extraction -------------------------------------------------------------------------------------


def _coding(rows: Rows, code: str, coding: Any) -> None:
    if not isinstance(coding, dict):
        return
    if isinstance(coding.get("code"), str):
        rows.token.append((code, text_or_none(coding.get("system")), coding["code"]))
    if isinstance(coding.get("display"), str):
        add_string(rows, f"{code}:text", coding["display"])


def _identifier(rows: Rows, code: str, identifier: dict[str, Any]) -> None:
    value = identifier.get("value")
    if isinstance(value, str):
        rows.token.append((code, text_or_none(identifier.get("system")), value))
    kind = identifier.get("type")
    if not isinstance(kind, dict):
        return
    if isinstance(value, str):
        # :of-type (R4 §3.1.1.5.10): type-system|type-code|value, stored as (type-system, "type-code|value").
        for coding in kind.get("coding") or ():
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                rows.token.append((f"{code}:of-type", text_or_none(coding.get("system")), f"{coding['code']}|{value}"))
    if isinstance(kind.get("text"), str):
        add_string(rows, f"{code}:text", kind["text"])


def add_identifier_token(rows: Rows, code: str, identifier: Any) -> None:
    """The token of an Identifier alone (``Reference.identifier``, for ``:identifier``)."""
    if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
        rows.token.append((code, text_or_none(identifier.get("system")), identifier["value"]))


# -- SQL --------------------------------------------------------------------------------------------


def token_match(value: TokenValue, code_column: str = "code", system_column: str = "system") -> Condition:
    """``value`` on a row's token columns (a composite's rows hold their repetition's token under other names)."""
    # Indexed values are bounded prefixes (projections/indexed.py): compare like with like.
    code, system = indexed(value.code), indexed(value.system)
    if code is None:
        return Condition(f"{system_column} = ?", [system])
    if system is None:
        return Condition(f"{code_column} = ?", [code])
    if system == "":
        return Condition(f"{code_column} = ? AND {system_column} IS NULL", [code])
    return Condition(f"{code_column} = ? AND {system_column} = ?", [code, system])


def _of_type(value: OfTypeValue) -> Condition:
    code = indexed(f"{value.type_code}|{value.value}")
    return Condition("code = ? AND system = ?", [code, indexed(value.type_system)])


def _coded(param: SearchParameter, pairs: list[tuple[str, str]]) -> list[Condition]:
    """Rows holding any of ``pairs``: per system, ``system = ? AND code IN (...)``.

    A ``code`` element (``Patient.gender``) is indexed without a system, its system being the one its binding
    implies (R4 datatypes.html#code): on a parameter reaching such elements a row without a system matches
    by its code alone. An empty set matches no row (an empty value set has no member)."""
    systems: dict[str, list[str]] = {}
    for system, code in pairs:
        systems.setdefault(indexed(system), []).append(indexed(code))
    found = []
    for system, codes in systems.items():
        unique = list(dict.fromkeys(codes))
        found.append(Condition(f"system = ? AND code IN ({', '.join('?' * len(unique))})", [system, *unique]))
    if pairs and any(route.datatype in _TOKEN_PRIMITIVES for route in param.routes):
        unique = list(dict.fromkeys(indexed(code) for _, code in pairs))
        found.append(Condition(f"system IS NULL AND code IN ({', '.join('?' * len(unique))})", unique))
    return found or [Condition("1 = 0")]


def _bound(row: tuple[Any, ...]) -> tuple[Any, ...]:
    param, system, code = row
    return (param, indexed(system), indexed(code))


class TokenType:
    name = "token"
    table = IndexTable(
        "search_token",
        ("system", "code"),
        "system {text}, code {text} NOT NULL",
        ("code, system, sid",),
        "resource_type, param, code, system",
        _bound,
    )
    _modifiers = frozenset({"not", "text", "of-type", "missing"}) | TERMINOLOGY_MODIFIERS

    def accepts(self, param: SearchParameter, modifier: str) -> bool:
        # ``_id`` is the resource's own id, not a code of any code system.
        return modifier in self._modifiers and not (param.code == "_id" and modifier in TERMINOLOGY_MODIFIERS)

    def parse(self, name: str, param: SearchParameter, modifier: str | None, raw: str, base: str | None) -> ValueFilter:
        if modifier == "text":
            return ValueFilter(param, modifier, parse_values(name, raw, unescape))
        if modifier == "of-type":
            if not any(route.datatype == "Identifier" for route in param.routes):
                raise invalid(name, ":of-type applies only to identifier parameters")
            return ValueFilter(param, modifier, parse_values(name, raw, parse_of_type))
        if modifier in ("in", "not-in"):
            return ValueFilter(param, modifier, parse_values(name, raw, parse_value_set))
        if modifier in ("above", "below"):
            return ValueFilter(param, modifier, parse_values(name, raw, parse_subsumption))
        return ValueFilter(param, modifier, parse_values(name, raw, parse_token))

    def parse_value(self, text: str, base: str | None) -> Any:
        return parse_token(text)

    def extract(self, rows: Rows, code: str, datatype: str, value: Any) -> None:
        if datatype == "Coding":
            _coding(rows, code, value)
        elif datatype == "CodeableConcept" and isinstance(value, dict):
            for coding in value.get("coding") or ():
                _coding(rows, code, coding)
            if isinstance(value.get("text"), str):
                add_string(rows, f"{code}:text", value["text"])
        elif datatype == "Identifier" and isinstance(value, dict):
            _identifier(rows, code, value)
        elif datatype == "ContactPoint" and isinstance(value, dict):
            if isinstance(value.get("value"), str):
                rows.token.append((code, None, value["value"]))
        elif datatype == "boolean" and isinstance(value, bool):
            rows.token.append((code, None, "true" if value else "false"))
        elif datatype in _TOKEN_PRIMITIVES and isinstance(value, str):
            rows.token.append((code, None, value))

    def match(self, value: Any, base: str | None) -> Condition:
        return token_match(value)

    def condition(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        param, modifier = item.param, item.modifier
        if param.code == "_id":  # kept on the resource's own row (search_ids)
            marks = ", ".join("?" * len(item.values))
            negation = "NOT " if modifier == "not" else ""
            return Condition(f"{alias}.resource_id {negation}IN ({marks})", list(item.values))
        if modifier == "text":
            return in_table(alias, STRING.table.name, param, f"{param.code}:text", [words(v) for v in item.values])
        if modifier == "of-type":
            return in_table(alias, self.table.name, param, f"{param.code}:of-type", [_of_type(v) for v in item.values])
        if modifier in TERMINOLOGY_MODIFIERS:
            return self._terminology(item, alias, base, context)
        # :not (R4 §3.1.1.5.10): resources with no matching token, those with no value at all included.
        tokens = [token_match(v) for v in item.values]
        return in_table(alias, self.table.name, param, param.code, tokens, negate=modifier == "not")

    def _terminology(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        param, modifier = item.param, item.modifier
        name = f"{param.code}:{modifier}"
        if context.terminology is None:
            raise Unprocessable([Issue("not-supported", f"{name} needs the terminology store, not at hand here", name)])
        pairs: list[tuple[str, str]] = []
        for value in item.values:
            if modifier in ("in", "not-in"):
                pairs += context.terminology.value_set(name, value, base)
            else:
                codes = context.terminology.subsumption(name, value.system, value.code, above=modifier == "above")
                pairs += [(value.system, code) for code in codes]
        # :not-in, as :not (R4 §3.1.1.5.10): the resources with no coding in the set, those with none at all too.
        return in_table(alias, self.table.name, param, param.code, _coded(param, pairs), negate=modifier == "not-in")


TOKEN = TokenType()
