"""FHIRPath invariants of the existence kind compiled once into Python predicates over resource JSON.

Most R4 invariants only ask which elements are there: ``att-1`` "data.empty() or contentType.exists()",
``obs-6`` "dataAbsentReason.empty() or value.empty()", ``dom-4``, ``qty-3``, ``prr-1``... For such an
expression, ``empty()`` and ``exists()`` (without criteria) always yield one boolean, so ``and``, ``or``,
``xor``, ``implies``, ``not()`` and ``=``/``!=`` between them are plain two-valued logic (R4
fhirpath.html#boolean-logic on singletons), and the whole expression is a function of which JSON keys are
present. :func:`compile_predicate` translates exactly that subset of fhirpathpy's parse tree, walking
members as fhirpathpy does (``_name`` companions of primitives, choice elements by the R4 model's
``choiceTypePaths``, a contained resource typed by its ``resourceType``), and returns None for anything
else, which fhirpathpy then evaluates. tests/unit/test_fhirpath_predicates.py checks every compiled
invariant against fhirpathpy on every place of the HL7 R4 examples.

Two frequent invariants outside that subset have their own translation here, each tied to the spec's exact
expression text and answering None (fhirpathpy decides) where its shortcut does not apply: ``ref-1`` (a
local reference names a contained resource) and ``per-1`` (a Period's start is not after its end, when both
are of the same precision).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeAlias

from fhirpathpy.models import models as fhirpath_models

__all__ = ["Predicate", "compile_predicate"]

#: (the element, %resource and %rootResource) -> whether the invariant holds; None when undecided.
Predicate: TypeAlias = Callable[[Any, Mapping[str, Any]], "bool | None"]

_R4_MODEL: dict[str, Any] = fhirpath_models["r4"]
_ELSEWHERE: dict[str, str] = _R4_MODEL["pathsDefinedElsewhere"]
_CHOICES: dict[str, list[str]] = _R4_MODEL["choiceTypePaths"]
_PATH_TO_TYPE: dict[str, str] = _R4_MODEL["path2Type"]
_NAME = re.compile(r"[a-z][A-Za-z0-9]*")

_Nodes: TypeAlias = list[tuple[Any, str]]  # (JSON value, its FHIRPath type path), as fhirpathpy's nodes
_Boolean: TypeAlias = Callable[[Any, str], bool]  # (element, its type path) -> a boolean singleton


def _node_path(data: Any, path: str) -> str:
    """fhirpathpy's ResourceNode: an object with a ``resourceType`` is typed by it."""
    if isinstance(data, Mapping) and "resourceType" in data:
        return str(data["resourceType"])
    return path


def _member(nodes: _Nodes, key: str) -> _Nodes:
    """``nodes.key`` as fhirpathpy's member invocation builds it (engine/evaluators, create_reduce_member_
    invocation): the value and the ``_key`` companion both count, a choice element is found by its types."""
    found: _Nodes = []
    for data, parent in nodes:
        if not isinstance(data, Mapping):
            continue  # a primitive has no members (``length`` is left out of the subset by _path)
        path = _ELSEWHERE.get(f"{parent}.{key}", f"{parent}.{key}")
        value = companion = None
        types = _CHOICES.get(path)
        if types:
            for suffix in types:
                value, companion = data.get(f"{key}{suffix}"), data.get(f"_{key}{suffix}")
                if value is not None or companion is not None:
                    path += suffix
                    break
        else:
            value, companion = data.get(key), data.get(f"_{key}")
            if key == "extension":
                path = "Extension"
        path = _PATH_TO_TYPE.get(path, path)
        for item in (value, companion):
            if item is None or item == []:
                continue
            if isinstance(item, list):
                found.extend((x, _node_path(x, path)) for x in item)
            else:
                found.append((item, _node_path(item, path)))
    return found


def _path(tree: dict[str, Any]) -> list[str] | None:
    """The member names of a path expression (``contained.meta.versionId``), or None if it is anything else."""
    kind, children = tree.get("type"), tree.get("children", [])
    if kind == "TermExpression" and len(children) == 1:
        return _path(children[0])
    if kind == "InvocationTerm" and len(children) == 1:
        return _path(children[0])
    if kind == "MemberInvocation" and len(children) == 1 and children[0].get("type") == "Identifier":
        name = str(children[0].get("text", ""))
        return [name] if _NAME.fullmatch(name) and name != "length" else None
    if kind == "InvocationExpression" and len(children) == 2:
        head, tail = _path(children[0]), _path(children[1])
        return head + tail if head is not None and tail is not None else None
    return None


def _function(tree: dict[str, Any]) -> str | None:
    """The name of a call without arguments (``exists()``), or None."""
    if tree.get("type") != "FunctionInvocation" or len(tree.get("children", [])) != 1:
        return None
    functn = tree["children"][0]
    if functn.get("type") != "Functn" or len(functn.get("children", [])) != 1:
        return None
    return str(functn["children"][0].get("text", "")) or None


@cache
def _candidates(parent: str, key: str) -> tuple[tuple[str, str], ...]:
    """The JSON keys (value, ``_`` companion) that ``parent.key`` may take, in the order :func:`_member`
    tries them: one pair, or one per type of a choice element."""
    path = _ELSEWHERE.get(f"{parent}.{key}", f"{parent}.{key}")
    types = _CHOICES.get(path)
    if types:
        return tuple((f"{key}{suffix}", f"_{key}{suffix}") for suffix in types)
    return ((key, f"_{key}"),)


def _present(key: str) -> _Boolean:
    """``key.exists()`` on one element, without building its nodes: what :func:`_member` finds is not
    empty exactly when the first pair of keys with anything holds a value other than an empty array."""

    def present(data: Any, path: str) -> bool:
        if not isinstance(data, Mapping):
            return False
        for value_key, companion_key in _candidates(_node_path(data, path), key):
            value, companion = data.get(value_key), data.get(companion_key)
            if value is not None or companion is not None:
                return (value is not None and value != []) or (companion is not None and companion != [])
        return False

    return present


def _collect(names: list[str]) -> Callable[[Any, str], _Nodes]:
    def nodes(data: Any, path: str) -> _Nodes:
        found: _Nodes = [(data, _node_path(data, path))]
        for name in names:
            found = _member(found, name)
            if not found:
                break
        return found

    return nodes


def _compile(tree: dict[str, Any]) -> _Boolean | None:
    """A boolean-singleton subexpression, or None outside the subset."""
    kind, children = tree.get("type"), tree.get("children", [])
    operators = tree.get("terminalNodeText", [])
    if kind == "TermExpression" and len(children) == 1 and children[0].get("type") == "ParenthesizedTerm":
        inner = children[0].get("children", [])
        return _compile(inner[0]) if len(inner) == 1 else None
    if kind == "InvocationExpression" and len(children) == 2:
        name = _function(children[1])
        if name == "not":
            operand = _compile(children[0])
            return None if operand is None else (lambda data, path: not operand(data, path))
        names = _path(children[0]) if name in ("exists", "empty") else None
        if names is None:
            return None
        if len(names) == 1:
            present = _present(names[0])
            if name == "exists":
                return present
            return lambda data, path: not present(data, path)
        nodes = _collect(names)
        if name == "exists":
            return lambda data, path: bool(nodes(data, path))
        return lambda data, path: not nodes(data, path)
    if kind in ("OrExpression", "AndExpression", "ImpliesExpression", "EqualityExpression") and len(children) == 2:
        left, right = _compile(children[0]), _compile(children[1])
        if left is None or right is None or len(operators) != 1:
            return None
        return _binary(str(operators[0]), left, right)
    return None


def _binary(operator: str, left: _Boolean, right: _Boolean) -> _Boolean | None:
    if operator == "or":
        return lambda data, path: left(data, path) or right(data, path)
    if operator == "and":
        return lambda data, path: left(data, path) and right(data, path)
    if operator in ("xor", "!="):
        return lambda data, path: left(data, path) != right(data, path)
    if operator == "=":
        return lambda data, path: left(data, path) == right(data, path)
    if operator == "implies":
        return lambda data, path: not left(data, path) or right(data, path)
    return None


# --- the two translations tied to their expression ----------------------------------------------------

_REF_1 = (
    "reference.startsWith('#').not() or "
    "(reference.substring(1).trace('url') in %rootResource.contained.id.trace('ids'))"
)


def _local_reference_resolves(node: Any, variables: Mapping[str, Any]) -> bool | None:
    """ref-1: a ``#id`` reference SHALL name a contained resource of the root resource."""
    reference = node.get("reference") if isinstance(node, Mapping) else None
    if not isinstance(reference, str) or not reference.startswith("#"):
        return None if reference is not None or "_reference" in node else True
    if reference == "#":
        return None  # substring(1) of "#" is empty: the expression is empty, fhirpathpy answers
    root = variables.get("rootResource")
    contained = root.get("contained") if isinstance(root, Mapping) else None
    if contained is not None and not (
        isinstance(contained, list) and all(isinstance(c, Mapping) and "_id" not in c for c in contained)
    ):
        return None
    return reference[1:] in {c.get("id") for c in contained or ()}


_PER_1 = "start.hasValue().not() or end.hasValue().not() or (start <= end)"
# Two instants to the second in the same time zone, or two dates (year-months, years) of the same
# precision: their text sorts as their time does. Other pairs (fractions of seconds, different or no time
# zones, mixed precisions, where FHIRPath's comparison may be empty) are left to fhirpathpy.
_SECONDS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})")
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")


def _period_in_order(node: Any, variables: Mapping[str, Any]) -> bool | None:
    """per-1: a Period's start SHALL NOT be after its end."""
    if not isinstance(node, Mapping):
        return None
    start, end = node.get("start"), node.get("end")
    if start is None or end is None:
        return None if "_start" in node or "_end" in node else True
    if not isinstance(start, str) or not isinstance(end, str) or len(start) != len(end):
        return None
    if (_SECONDS.fullmatch(start) and _SECONDS.fullmatch(end) and start[19:] == end[19:]) or (
        _DATE.fullmatch(start) and _DATE.fullmatch(end)
    ):
        return start <= end
    return None


_TRANSLATIONS: dict[str, Predicate] = {_REF_1: _local_reference_resolves, _PER_1: _period_in_order}


def compile_predicate(expression: str, tree: dict[str, Any], element_path: str) -> Predicate | None:
    """A Python predicate equal to ``expression`` (parsed by fhirpathpy into ``tree``) on every element of
    ``element_path`` it answers for, or None when the expression is outside what is translated here."""
    translation = _TRANSLATIONS.get(expression)
    if translation is not None:
        return translation
    children = tree.get("children", [])
    compiled = _compile(children[0]) if len(children) == 1 else None
    if compiled is None:
        return None
    boolean = compiled

    def predicate(node: Any, variables: Mapping[str, Any]) -> bool | None:
        return boolean(node, element_path)

    return predicate
