"""FHIRPath search expressions compiled into JSON routes (R4 §3.1.1.4, §2.1.0.3 FHIRPath), against the R4B models.

A FHIRPath engine evaluates ``Observation.subject.where(resolve() is Patient)`` in milliseconds; the
search index needs microseconds. The expressions in R4's registry use a small subset of FHIRPath — member
access, ``|`` unions, ``as``/``as()`` casts of choice elements, ``where(field='value')`` and
``where(resolve() is Type)`` — so each one is compiled once, against the structure definitions (the
R4B models of ``fhir.resources``), into :class:`Route`\\ s: the JSON keys to follow, the filters, and the
FHIR data type found at the end, which decides how the value is indexed.

Here, beside the domain, so that the spec generator (:mod:`ehr_core.spec.generate`) can write down what the
routes of the reference parameters point to as plain data: the CapabilityStatement lists includes and
revincludes from that table, without importing the model of every type (most of a process's memory).
:mod:`projections.search.paths` reads values along the routes.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from ehr_core.resources.types import REMOVED_IN_R4B

__all__ = ["Route", "Step", "UnsupportedExpression", "compile_expression", "reference_targets"]


class UnsupportedExpression(ValueError):
    """An expression outside the subset this compiler knows (a programming error in the definitions)."""


@dataclass(frozen=True)
class Step:
    #: The JSON key to follow (a choice element's key carries its type: ``valueQuantity``).
    key: str
    #: ``where(field='value')`` filters applied to the values reached by this step.
    where: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Route:
    """One concrete way an expression reaches values: keys from the resource root, and what is found."""

    steps: tuple[Step, ...]
    #: The FHIR data type at the end: ``CodeableConcept``, ``Reference``, ``dateTime``, ``boolean``...
    datatype: str
    #: ``where(resolve() is Patient)``: only references whose literal type is this one.
    reference_type: str | None = None
    #: Resource types a reference may point to (from the element definition), for chains and includes.
    targets: tuple[str, ...] = ()
    #: True when a step crosses a repeating element (``0..*``): a resource may have several values.
    repeats: bool = field(default=False, compare=False)
    #: The element reached, by element names (``Observation.effective`` for every ``effective[x]``).
    element: str = field(default="", compare=False)


def _unwrap(annotation: Any) -> Any:
    """``Optional[List[Annotated[str, Code()]]]`` → ``Annotated[str, Code()]``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        elif origin in (list, typing.List):  # noqa: UP006 - the models use typing.List
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation


def _is_list(annotation: Any) -> bool:
    """True for ``Optional[List[...]]``: a repeating element."""
    while typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) in (list, typing.List)  # noqa: UP006 - the models use typing.List


def _datatype(annotation: Any) -> str:
    """The FHIR type name of a model field's annotation."""
    inner = _unwrap(annotation)
    if typing.get_origin(inner) is typing.Annotated:
        marker = typing.get_args(inner)[1]
        name = type(marker).__name__
        return name[0].lower() + name[1:]
    if inner is bool:
        return "boolean"
    name = getattr(inner, "__name__", str(inner))
    if name.endswith("Type"):
        return name[: -len("Type")]
    raise UnsupportedExpression(f"cannot name the FHIR type of {annotation!r}")


@cache
def _fields(type_name: str) -> dict[str, tuple[str, Any]]:
    """JSON key → (datatype, field info) for a resource, backbone element or data type.

    An R4 type R4B removed has no model: it is searched by the common parameters only (``_id``,
    ``_lastUpdated``, ``_tag``...), over the elements every DomainResource has."""
    model = get_fhir_model_class("DomainResource" if type_name in REMOVED_IN_R4B else type_name)
    fields: dict[str, tuple[str, Any]] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        fields[info.alias or name] = (_datatype(info.annotation), info)
    return fields


def _choices(type_name: str, name: str) -> list[tuple[str, str, Any]]:
    """The keys of choice element ``name[x]``: ``[("valueQuantity", "Quantity", field), ...]``."""
    found = []
    for key, (datatype, info) in _fields(type_name).items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("one_of_many") == name:
            found.append((key, datatype, info))
    return found


def _split(text: str, separator: str) -> list[str]:
    """Split at ``separator`` outside parentheses and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    index = 0
    while index < len(text):
        char = text[index]
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(separator, index):
            parts.append(text[start:index])
            index += len(separator)
            start = index
            continue
        index += 1
    parts.append(text[start:])
    return [part.strip() for part in parts]


_CAST = re.compile(r"^\((?P<inner>.+) as (?P<type>\w+)\)(?P<rest>(\..+)?)$")
_AS_CALL = re.compile(r"^(?:as|ofType)\((?P<type>\w+)\)$")
_WHERE_EQ = re.compile(r"^where\((?P<field>\w+)\s*=\s*'(?P<value>[^']*)'\)$")
_WHERE_RESOLVE = re.compile(r"^where\(resolve\(\) is (?P<type>\w+)\)$")


def _tokens(alternative: str) -> list[str]:
    """``(A.b as T).c`` → ``["A", "b", "as(T)", "c"]``; ``A.b.where(x='y')`` → ``["A", "b", "where(x='y')"]``."""
    match = _CAST.match(alternative)
    if match:
        rest = match.group("rest")
        tail = _split(rest[1:], ".") if rest else []
        return [*_tokens(match.group("inner")), f"as({match.group('type')})", *tail]
    return _split(alternative, ".")


@dataclass
class _Partial:
    steps: list[Step]
    type_name: str
    field: Any
    reference_type: str | None = None
    repeats: bool = False
    element: str = ""


def _capitalised(type_name: str) -> str:
    return type_name[0].upper() + type_name[1:]


def _advance(partial: _Partial, token: str) -> list[_Partial]:
    """Apply one token to a partial route: member access, cast or filter."""
    where = _WHERE_EQ.match(token)
    if where:
        last = partial.steps[-1]
        filtered = Step(last.key, (*last.where, (where.group("field"), where.group("value"))))
        return [
            _Partial(
                [*partial.steps[:-1], filtered],
                partial.type_name,
                partial.field,
                None,
                partial.repeats,
                partial.element,
            )
        ]
    resolve = _WHERE_RESOLVE.match(token)
    if resolve:
        return [
            _Partial(
                partial.steps, partial.type_name, partial.field, resolve.group("type"), partial.repeats, partial.element
            )
        ]
    cast = _AS_CALL.match(token)
    if cast:
        # A cast applies to the choice element reached by the previous member step: pick its typed key.
        wanted = cast.group("type")
        if partial.type_name == wanted or partial.type_name == _capitalised(wanted):
            return [partial]
        return []
    if not re.fullmatch(r"[A-Za-z]\w*", token):
        raise UnsupportedExpression(f"unsupported FHIRPath step {token!r}")
    if partial.type_name[:1].islower():
        raise UnsupportedExpression(f"{token!r} below primitive {partial.type_name}")
    fields = _fields(partial.type_name)
    if token in fields:
        datatype, found = fields[token]
        repeats = partial.repeats or _is_list(found.annotation)
        return [_Partial([*partial.steps, Step(token)], datatype, found, None, repeats, f"{partial.element}.{token}")]
    choices = _choices(partial.type_name, token)
    if not choices:
        raise UnsupportedExpression(f"{partial.type_name} has no element {token!r}")
    return [
        _Partial([*partial.steps, Step(key)], datatype, found, None, partial.repeats, f"{partial.element}.{token}")
        for key, datatype, found in choices
    ]


def _targets(field: Any, reference_type: str | None) -> tuple[str, ...]:
    if reference_type is not None:
        return (reference_type,)
    extra = field.json_schema_extra if field is not None else None
    targets = extra.get("enum_reference_types") if isinstance(extra, dict) else None
    return tuple(t for t in targets or () if t != "Resource") or (("Resource",) if targets else ())


@cache
def compile_expression(resource_type: str, expression: str) -> tuple[Route, ...]:
    """The routes of ``expression`` evaluated on a ``resource_type`` resource.

    ``Resource.x`` (the common parameters) is read as ``<resource_type>.x``; alternatives for other
    types (``AllergyIntolerance.patient | CarePlan.subject`` in shared definitions) are skipped.
    """
    routes: list[Route] = []
    for alternative in _split(expression, "|"):
        tokens = _tokens(alternative.strip())
        root = tokens[0].lstrip("(")
        if root not in (resource_type, "Resource", "DomainResource"):
            continue
        partials = [_Partial([], resource_type, None, None, False, resource_type)]
        for token in tokens[1:]:
            partials = [advanced for partial in partials for advanced in _advance(partial, token)]
        for partial in partials:
            if not partial.steps:
                raise UnsupportedExpression(f"{expression!r} selects the resource itself")
            routes.append(
                Route(
                    tuple(partial.steps),
                    partial.type_name,
                    partial.reference_type,
                    _targets(partial.field, partial.reference_type)
                    if partial.type_name in ("Reference", "canonical")
                    else (),
                    partial.repeats,
                    partial.element,
                )
            )
    return tuple(routes)


def reference_targets(routes: tuple[Route, ...]) -> tuple[str, ...]:
    """The resource types a reference parameter over ``routes`` may point to, in the routes' order.

    A reference parameter over a plain ``uri`` (ConceptMap.source[x]) or an untyped ``canonical``: the
    element definition names no target profile, so any resource type may be its target (``Resource``).
    """
    targets: list[str] = []
    for route in routes:
        targets += [t for t in route.targets if t not in targets]
    return tuple(targets) if targets or not routes else ("Resource",)
