"""``_filter``: a boolean expression over the searched type's parameters (R4 search_filter.html).

``Patient?_filter=name co "gom" and birthdate ge 1950`` is parsed by
:mod:`projections.search.filter_syntax`; each comparison becomes the filter the equivalent plain
parameter would be (``name:contains=gom``, ``birthdate=ge1950``), through the same parsing
(:func:`projections.search.query.parameter_filter`) and the same SQL (:func:`projections.search.sql.condition`),
so ``_filter`` finds exactly what the plain parameters find; ``and``, ``or``, ``not`` and parentheses
combine those conditions in SQL.

Operators by parameter type (R4 search_filter.html "Operations"):

- every type: ``pr true|false`` (``:missing``);
- string: ``eq`` (equal, case and accents folded), ``ne``, ``co`` (``:contains``), ``sw`` (the plain
  search: starts with), ``ew`` (ends with);
- token: ``eq``, ``ne`` (``:not``); reference: ``eq``, ``re``, ``ne``; uri: ``eq``, ``ne``, ``sw`` (``:below``);
- date, number, quantity: ``eq ne gt lt ge le sa eb ap``, the search prefixes of the same name.

Everything else — ``ss``, ``sb``, ``in``, ``ni``, ``po``, filters inside a path (``related[type eq x]``),
a parameter the type does not have — is a 400 naming it: a filter the server cannot apply must not widen
the result silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from ehr_core.errors import InvalidResource, Issue
from projections.indexed import indexed
from projections.search.filter_syntax import (
    Comparison,
    Expression,
    FilterSyntaxError,
    Logical,
    Negation,
    parse_filter,
)
from projections.search.fold import fold
from projections.search.query import Filter, parameter_filter
from projections.search.registry import SearchParameter, parameter
from projections.search.special import SpecialFilter, register
from projections.search.sql import Condition, Context, condition

__all__ = ["FilterExpression", "parse_filter_parameter"]

_PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
_ORDERED = frozenset({"date", "number", "quantity"})


def _invalid(message: str, code: str = "invalid") -> InvalidResource:
    return InvalidResource([Issue(code, f"search parameter _filter: {message}", "_filter")])


def _unsupported(message: str) -> InvalidResource:
    return _invalid(message, "not-supported")


# -- the translated tree ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Leaf:
    """A comparison as the plain parameter's filter, or (string ``eq``/``ne``/``ew``) as folded SQL."""

    item: Filter | None
    #: For string ``eq``/``ne``/``ew``: the parameter, the operator and the value.
    folded: tuple[SearchParameter, str, str] | None = None
    negated: bool = False


@dataclass(frozen=True)
class _Node:
    operator: str  # "and" | "or" | "not"
    operands: tuple[_Tree, ...]


_Tree = _Leaf | _Node


class FilterExpression(SpecialFilter):
    """A parsed and translated ``_filter``."""

    # Date comparisons use the date spans; reading them (a few dozen rows) is cheaper than looking first.
    dates = True

    def __init__(self, tree: _Tree) -> None:
        self.tree = tree

    def condition(self, alias: str, base: str | None, context: Context) -> Condition:
        return _sql(self.tree, alias, base, context)


def _sql(tree: _Tree, alias: str, base: str | None, context: Context) -> Condition:
    if isinstance(tree, _Leaf):
        if tree.item is not None:
            found = condition(tree.item, alias, base, context)
        else:
            assert tree.folded is not None
            found = _folded_string(alias, *tree.folded)
        return Condition(f"NOT ({found.sql})", found.params) if tree.negated else found
    parts = [_sql(operand, alias, base, context) for operand in tree.operands]
    params = [p for part in parts for p in part.params]
    if tree.operator == "not":
        return Condition(f"NOT ({parts[0].sql})", params)
    return Condition(f" {tree.operator.upper()} ".join(f"({part.sql})" for part in parts), params)


# -- translation ------------------------------------------------------------------------------------


def _final_parameter(resource_type: str, comparison: Comparison) -> SearchParameter:
    """The parameter the comparison compares (for a chain ``subject.name``: ``name`` of a target type)."""
    types = [resource_type]
    found: SearchParameter | None = None
    for index, segment in enumerate(comparison.path):
        if segment.filter is not None:
            raise _unsupported(f"filters inside a parameter path ({segment.name}[...]) are not supported")
        found = next((p for t in types if (p := parameter(t, segment.name)) is not None), None)
        if found is None:
            raise _unsupported(f"{comparison.dotted}: {'/'.join(types)} has no search parameter {segment.name!r}")
        if index < len(comparison.path) - 1:
            if found.type != "reference":
                raise _invalid(f"{comparison.dotted}: only reference parameters can be chained")
            types = [t for t in found.targets if t != "Resource"]
    assert found is not None
    return found


def _escaped(value: str, keep: str = "") -> str:
    """``value`` written for the plain parameter syntax (R4 §3.1.1.4.2: ``\\``, ``,``, ``$``, ``|`` escaped)."""
    out = []
    for char in value:
        if char in "\\,$|" and char not in keep:
            out.append("\\")
        out.append(char)
    return "".join(out)


def _plain(resource_type: str, name: str, raw: str, base: str | None) -> Filter:
    try:
        item = parameter_filter(resource_type, name, raw, base)
    except InvalidResource as error:  # a malformed value: say it came from _filter
        detail = error.issues[0].diagnostics if error.issues else str(error)
        raise _invalid(detail) from None
    if item is None:
        raise _unsupported(f"{resource_type} has no search parameter {name!r}")
    return item


def _folded_string(alias: str, param: SearchParameter, operator: str, value: str) -> Condition:
    """String ``eq`` and ``ew`` on the string index's folded values (the plain search has no such mode)."""
    folded = fold(value)
    if operator == "ew":
        escaped = folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        test, params = "value LIKE ? ESCAPE '\\'", [f"%{escaped}"]
    else:
        test, params = "value = ?", [indexed(folded)]
    return Condition(
        f"{alias}.sid IN (SELECT sid FROM search_string WHERE resource_type = ? AND param = ? AND {test})",
        [param.resource_type, param.code, *params],
    )


def _leaf(resource_type: str, comparison: Comparison, base: str | None) -> _Leaf:
    param = _final_parameter(resource_type, comparison)
    name, operator, value, kind = comparison.dotted, comparison.operator, comparison.value, param.type
    if operator == "pr":
        if value.lower() not in ("true", "false"):
            raise _invalid(f"{name} pr takes true or false, got {value!r}")
        return _Leaf(_plain(resource_type, f"{name}:missing", "false" if value.lower() == "true" else "true", base))
    if not value:
        raise _invalid(f"{name} {operator}: an empty value matches nothing")
    chained = len(comparison.path) > 1
    if kind in _ORDERED and operator in _PREFIXES:
        return _Leaf(_plain(resource_type, name, operator + value, base))
    if kind == "string" and operator in ("sw", "co"):
        modifier = ":contains" if operator == "co" else ""
        return _Leaf(_plain(resource_type, name + modifier, _escaped(value), base))
    if kind == "string" and operator in ("eq", "ne", "ew") and not chained:
        return _Leaf(None, (param, operator, value), negated=operator == "ne")
    if (kind == "token" or param.code == "_id") and operator in ("eq", "ne"):
        modifier = ":not" if operator == "ne" else ""
        return _Leaf(_plain(resource_type, name + modifier, _escaped(value, keep="|"), base))
    if kind == "reference" and operator in ("eq", "re", "ne"):
        return _Leaf(_plain(resource_type, name, _escaped(value), base), negated=operator == "ne")
    if kind == "uri" and operator in ("eq", "ne", "sw"):
        modifier = ":below" if operator == "sw" else ""
        return _Leaf(_plain(resource_type, name + modifier, _escaped(value), base), negated=operator == "ne")
    where = " on a chained parameter" if chained and kind == "string" else ""
    raise _unsupported(f"operator {operator!r} is not supported on the {kind} parameter {name}{where}")


def _translate(resource_type: str, expression: Expression, base: str | None) -> _Tree:
    if isinstance(expression, Comparison):
        return _leaf(resource_type, expression, base)
    if isinstance(expression, Negation):
        return _Node("not", (_translate(resource_type, expression.operand, base),))
    assert isinstance(expression, Logical)
    return _Node(expression.operator, tuple(_translate(resource_type, item, base) for item in expression.operands))


def parse_filter_parameter(resource_type: str, raw: str, base: str | None) -> FilterExpression:
    """``_filter=raw`` on ``resource_type``: 400 (``invalid``) when malformed, 400 (``not-supported``)
    naming what this server cannot apply."""
    try:
        expression = parse_filter(raw)
    except FilterSyntaxError as error:
        raise _invalid(f"malformed filter: {error}") from None
    return FilterExpression(_translate(resource_type, expression, base))


register("_filter", parse_filter_parameter)
