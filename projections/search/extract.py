"""Index values from a resource, per parameter type (R4 §3.1.1.5 "Search Parameter Types").

Each parameter's routes reach typed values, and its type (:mod:`projections.search.types`) turns each
value into index rows as the spec's tables say: a CodeableConcept gives one token per coding (R4
§3.1.1.5.10), a HumanName one string per part (§3.1.1.5.7), a Period one date range (§3.1.1.5.6), a
Reference its ``Type/id`` (§3.1.1.5.9); a composite its components per repetition (search.html#composite).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from projections.search.definitions import COMMON, COMPOSITES, DEFINITIONS
from projections.search.paths import Reader, reader
from projections.search.registry import SearchParameter, parameters
from projections.search.types import COMPOSITE, SEARCH_TYPES
from projections.search.types.base import Rows
from projections.search.types.composite import CompositeExtraction
from projections.search.types.string import MAX_STRING

__all__ = ["FINGERPRINT", "MAX_STRING", "Rows", "extract"]

#: Raised when the rows an unchanged parameter gives change (how a data type is read: 2, Money as a quantity;
#: 3, a composite's rows carrying its key token, types/composite.py; 4, a reference row carrying its target's
#: key, projections/search/targets.py), which leaves the index of stored resources as stale as a change of
#: the registry does.
EXTRACTION_VERSION = 4

#: What the index of a resource depends on: the generated registry and how values are read. The search
#: index records the fingerprint it was built with (projections/search/reindex.py).
FINGERPRINT = hashlib.sha256(
    repr((EXTRACTION_VERSION, COMMON, sorted(DEFINITIONS.items()), sorted(COMPOSITES.items()))).encode()
).hexdigest()[:16]


@dataclass(frozen=True)
class _Read:
    """One route of one parameter, compiled: the values it reaches from its first key's value, and the
    parameter's type that turns each into rows."""

    code: str
    datatype: str
    read: Reader
    add: Callable[[Rows, str, str, Any], None]


@dataclass(frozen=True)
class _Plan:
    """A resource type's parameters compiled for extraction. Routes are grouped by the top-level key they
    start from: a resource is read through its own keys, so the many parameters whose element it lacks (an
    Observation with a ``valueQuantity`` has no ``valueCodeableConcept``, no ``component``) cost nothing."""

    by_key: dict[str, tuple[_Read, ...]]
    special: tuple[SearchParameter, ...]
    composites: tuple[CompositeExtraction, ...]


@cache
def _plan(resource_type: str) -> _Plan:
    by_key: dict[str, list[_Read]] = {}
    special: list[SearchParameter] = []
    composites: list[CompositeExtraction] = []
    for param in parameters(resource_type).values():
        if param.code in ("_id", "_lastUpdated"):
            continue  # kept on the resource's own index row (search_ids)
        if param.special:
            special.append(param)
            continue
        if param.type == COMPOSITE.name:
            composites.append(COMPOSITE.compiled(param))
            continue
        search_type = SEARCH_TYPES.get(param.type)
        if search_type is None:
            continue
        for route in param.routes:
            read = _Read(param.code, route.datatype, reader(route), search_type.extract)
            by_key.setdefault(route.steps[0].key, []).append(read)
    return _Plan({key: tuple(reads) for key, reads in by_key.items()}, tuple(special), tuple(composites))


def extract(resource: dict[str, Any]) -> Rows:
    """Every index row of ``resource`` (its ``resourceType`` picks the parameters)."""
    plan = _plan(str(resource.get("resourceType")))
    rows = Rows()
    by_key = plan.by_key
    for key, value in resource.items():
        reads = by_key.get(key)
        if reads is None or value is None:
            continue
        for found in reads:
            for item in found.read(value):
                found.add(rows, found.code, found.datatype, item)
    for param in plan.special:
        _deceased(rows, param, resource)
    components: dict[Any, Any] = {}  # component rows, shared by the composites of this resource
    keys = resource.keys()
    for composite in plan.composites:
        if composite.possible(keys):
            composite.extract(rows, resource, components)
    return rows.deduplicated()


def _deceased(rows: Rows, param: SearchParameter, resource: dict[str, Any]) -> None:
    """``Patient.deceased.exists() and Patient.deceased != false``."""
    deceased = resource.get("deceasedBoolean") is True or "deceasedDateTime" in resource
    rows.token.append((param.code, None, "true" if deceased else "false"))
