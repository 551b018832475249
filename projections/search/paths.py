"""Reading values along compiled search parameter routes (R4 §3.1.1.4): the index's inner loop.

The expressions are compiled into :class:`Route`\\ s by :mod:`ehr_core.resources.fhirpath_routes` (against
the R4B models); here each route becomes a function of a resource's JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ehr_core.resources.fhirpath_routes import Route, Step, UnsupportedExpression, compile_expression

__all__ = ["Reader", "Route", "Step", "UnsupportedExpression", "compile_expression", "reader", "walk"]


#: What a compiled route does with the value found at its first key: every value the route reaches from it.
Reader = Callable[[Any], list[Any]]


def _flatten(value: Any) -> list[Any]:
    """A JSON value as a FHIRPath collection: an array's items (nulls left out), or the value alone."""
    if isinstance(value, list):
        return [item for item in value if item is not None]
    return [value]


def _matches(item: Any, where: tuple[tuple[str, str], ...]) -> bool:
    return isinstance(item, dict) and all(item.get(name) == wanted for name, wanted in where)


def reader(route: Route) -> Reader:
    """``route`` compiled into a function of the value at its first key (``resource[route.steps[0].key]``,
    not None): the values the route reaches, JSON arrays flattened as FHIRPath collections.

    Compiled once per parameter (:mod:`projections.search.extract`): an index build reads every route of
    every resource, and most routes are one member step (``Observation.status``), which needs no loop.
    """
    first = route.steps[0].where
    later = tuple((step.key, step.where) for step in route.steps[1:])
    reference_type = route.reference_type
    if not first and not later and reference_type is None:
        return _flatten

    def read(value: Any) -> list[Any]:
        current = _flatten(value)
        if first:
            current = [item for item in current if _matches(item, first)]
        for key, where in later:
            following: list[Any] = []
            for node in current:
                if not isinstance(node, dict):
                    continue
                found = node.get(key)
                if found is None:
                    continue
                if isinstance(found, list):
                    following += [item for item in found if item is not None]
                else:
                    following.append(found)
            current = [item for item in following if _matches(item, where)] if where else following
            if not current:
                return current
        if reference_type is not None:
            return [value for value in current if _reference_is(value, reference_type)]
        return current

    return read


def walk(resource: dict[str, Any], route: Route) -> Iterator[Any]:
    """Every value ``route`` reaches in ``resource`` (JSON arrays flattened, as FHIRPath collections)."""
    if not route.steps:  # the resource itself (a composite's repetition)
        if route.reference_type is None or _reference_is(resource, route.reference_type):
            yield resource
        return
    value = resource.get(route.steps[0].key) if isinstance(resource, dict) else None
    if value is not None:
        yield from reader(route)(value)


def _reference_is(value: Any, resource_type: str) -> bool:
    """``where(resolve() is Patient)`` without resolving: the literal reference's type, or ``Reference.type``."""
    if not isinstance(value, dict):
        return False
    reference = value.get("reference")
    if isinstance(reference, str):
        parts = reference.split("?")[0].split("/")
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        return len(parts) >= 2 and parts[-2] == resource_type
    return value.get("type") == resource_type
