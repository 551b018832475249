"""The search parameters by resource type, compiled (R4 §3.1.1.4 "Search Parameters").

A :class:`SearchParameter` is one row of :mod:`projections.search.definitions` with its expression
compiled to routes (:mod:`ehr_core.resources.fhirpath_routes`) and, for references, the types it may point to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

from ehr_core.resources.fhirpath_routes import Route, compile_expression, reference_targets
from projections.search.definitions import COMMON, COMPOSITES, DEFINITIONS

__all__ = [
    "SPECIAL",
    "Component",
    "SearchParameter",
    "declared",
    "parameter",
    "parameters",
    "searchable_types",
]

#: Expressions evaluated by hand-written code in :mod:`projections.search.extract` (not paths).
SPECIAL = frozenset({"Patient.deceased.exists() and Patient.deceased != false"})


@dataclass(frozen=True)
class Component:
    """One component of a composite parameter (R4 search.html#composite): its own code and type, and its
    routes from one repetition of the composite's element (or, for ``%resource.x``, from the resource)."""

    code: str
    type: str
    expression: str
    routes: tuple[Route, ...]
    from_resource: bool = False


@dataclass(frozen=True)
class SearchParameter:
    resource_type: str
    code: str
    #: token, string, date, reference, quantity, number, uri or composite.
    type: str
    expression: str
    routes: tuple[Route, ...]
    #: For references: the resource types the parameter may point to (``("Resource",)`` for any).
    targets: tuple[str, ...]
    #: For composites: the components; :attr:`routes` then reach the repetitions they are matched within.
    components: tuple[Component, ...] = ()
    #: For composites: the routes to the repetitions (the resource itself: no step) components are matched in.
    repetitions: tuple[Route, ...] = ()

    @property
    def special(self) -> bool:
        return self.expression in SPECIAL

    @property
    def single_valued(self) -> bool:
        """At most one value per resource: no repeating element on the way, one element (R4 0..1).

        Then AND-ed conditions on this parameter hold on the same value, and may be checked together.
        """
        return (
            bool(self.routes) and not any(r.repeats for r in self.routes) and len({r.element for r in self.routes}) == 1
        )


@cache
def parameters(resource_type: str) -> dict[str, SearchParameter]:
    """Every supported parameter of ``resource_type`` by code, the common ones included."""
    rows = (*COMMON, *DEFINITIONS.get(resource_type, ()))
    found: dict[str, SearchParameter] = {}
    for code, kind, expression in rows:
        if kind == "composite":
            found[code] = _composite(resource_type, code, expression)
            continue
        routes = () if expression in SPECIAL else compile_expression(resource_type, expression)
        if kind == "reference":
            targets = reference_targets(routes)
        else:
            targets = tuple(dict.fromkeys(t for route in routes for t in route.targets))
        found[code] = SearchParameter(resource_type, code, kind, expression, routes, targets)
    return found


def _composite(resource_type: str, code: str, expression: str) -> SearchParameter:
    """A composite: the routes to its repetitions (the resource itself is the empty route) and its components'
    routes relative to one repetition — ``Observation.component`` then ``code``, ``value.as(Quantity)``."""
    alternatives = [a.strip() for a in expression.split("|")]
    repetitions = [
        Route((), resource_type) if a == resource_type else compile_expression(resource_type, a)[0]
        for a in alternatives
    ]
    components = []
    for component_code, kind, relative in COMPOSITES[(resource_type, code)]:
        parts = [part.strip() for part in relative.split("|")]
        if all(part.startswith("%resource.") for part in parts):
            full = " | ".join(f"{resource_type}.{part.removeprefix('%resource.')}" for part in parts)
            components.append(Component(component_code, kind, relative, compile_expression(resource_type, full), True))
            continue
        routes: list[Route] = []
        for alternative, repetition in zip(alternatives, repetitions, strict=True):
            full = " | ".join(f"{alternative}.{part}" for part in parts)
            for route in compile_expression(resource_type, full):
                routes.append(replace(route, steps=route.steps[len(repetition.steps) :]))
        components.append(Component(component_code, kind, relative, tuple(dict.fromkeys(routes))))
    return SearchParameter(resource_type, code, "composite", expression, (), (), tuple(components), tuple(repetitions))


def declared(resource_type: str) -> dict[str, str]:
    """Every supported parameter of ``resource_type`` by code, with its search type, uncompiled.

    What the CapabilityStatement lists: compiling needs the type's R4B model, and importing every model
    of 120-odd types costs seconds that a ``/metadata`` request should not pay.
    """
    return {code: kind for code, kind, _expression in (*COMMON, *DEFINITIONS.get(resource_type, ()))}


def parameter(resource_type: str, code: str) -> SearchParameter | None:
    return parameters(resource_type).get(code)


def searchable_types() -> tuple[str, ...]:
    """Types with parameters of their own (every other type still has the common ones)."""
    return tuple(sorted(DEFINITIONS))
