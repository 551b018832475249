"""The search parameters by resource type, compiled (R4 §3.1.1.4 "Search Parameters").

A :class:`SearchParameter` is one row of :mod:`projections.search.definitions` with its expression
compiled to routes (:mod:`projections.search.paths`) and, for references, the types it may point to.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from projections.search.definitions import COMMON, DEFINITIONS
from projections.search.paths import Route, compile_expression

__all__ = [
    "SPECIAL",
    "SearchParameter",
    "declared",
    "parameter",
    "parameters",
    "searchable_types",
]

#: Expressions evaluated by hand-written code in :mod:`projections.search.extract` (not paths).
SPECIAL = frozenset({"Patient.deceased.exists() and Patient.deceased != false"})


@dataclass(frozen=True)
class SearchParameter:
    resource_type: str
    code: str
    #: token, string, date, reference, quantity, number or uri.
    type: str
    expression: str
    routes: tuple[Route, ...]
    #: For references: the resource types the parameter may point to (``("Resource",)`` for any).
    targets: tuple[str, ...]

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
        routes = () if expression in SPECIAL else compile_expression(resource_type, expression)
        targets: list[str] = []
        for route in routes:
            targets += [t for t in route.targets if t not in targets]
        if kind == "reference" and routes and not targets:
            # A reference parameter over a plain ``uri`` (ConceptMap.source[x]) or an untyped ``canonical``:
            # the element definition names no target profile, so any resource type may be its target.
            targets = ["Resource"]
        found[code] = SearchParameter(resource_type, code, kind, expression, routes, tuple(targets))
    return found


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
