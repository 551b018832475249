"""Index values from a resource, per parameter type (R4 §3.1.1.5 "Search Parameter Types").

Each parameter's routes reach typed values, and its type (:mod:`projections.search.types`) turns each
value into index rows as the spec's tables say: a CodeableConcept gives one token per coding (R4
§3.1.1.5.10), a HumanName one string per part (§3.1.1.5.7), a Period one date range (§3.1.1.5.6), a
Reference its ``Type/id`` (§3.1.1.5.9); a composite its components per repetition (search.html#composite).
"""

from __future__ import annotations

import hashlib
from typing import Any

from projections.search.definitions import COMMON, COMPOSITES, DEFINITIONS
from projections.search.paths import walk
from projections.search.registry import SearchParameter, parameters
from projections.search.types import COMPOSITE, SEARCH_TYPES
from projections.search.types.base import Rows
from projections.search.types.string import MAX_STRING

__all__ = ["FINGERPRINT", "MAX_STRING", "Rows", "extract"]

#: Raised when the rows an unchanged parameter gives change (how a data type is read: 2, Money as a quantity),
#: which leaves the index of stored resources as stale as a change of the registry does.
EXTRACTION_VERSION = 2

#: What the index of a resource depends on: the generated registry and how values are read. The search
#: index records the fingerprint it was built with (projections/search/reindex.py).
FINGERPRINT = hashlib.sha256(
    repr((EXTRACTION_VERSION, COMMON, sorted(DEFINITIONS.items()), sorted(COMPOSITES.items()))).encode()
).hexdigest()[:16]


def extract(resource: dict[str, Any]) -> Rows:
    """Every index row of ``resource`` (its ``resourceType`` picks the parameters)."""
    rows = Rows()
    components: dict[Any, Any] = {}  # component rows, shared by the composites of this resource
    for param in parameters(str(resource.get("resourceType"))).values():
        if param.code in ("_id", "_lastUpdated"):
            continue  # kept on the resource's own index row (search_ids)
        if param.special:
            _deceased(rows, param, resource)
            continue
        if param.type == COMPOSITE.name:
            COMPOSITE.extract_resource(rows, param, resource, components)
            continue
        search_type = SEARCH_TYPES.get(param.type)
        if search_type is None:
            continue
        for route in param.routes:
            for value in walk(resource, route):
                search_type.extract(rows, param.code, route.datatype, value)
    return rows.deduplicated()


def _deceased(rows: Rows, param: SearchParameter, resource: dict[str, Any]) -> None:
    """``Patient.deceased.exists() and Patient.deceased != false``."""
    deceased = resource.get("deceasedBoolean") is True or "deceasedDateTime" in resource
    rows.token.append((param.code, None, "true" if deceased else "false"))
