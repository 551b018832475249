"""``_summary`` and ``_elements``: returning part of each resource (R4 §3.1.1.5.8.1, §3.1.1.5.9).

The summary elements are the ones the structure definitions flag ``isSummary`` (the R4B models carry
the flag as ``summary_element_property``); mandatory elements are kept in every subset. A subsetted
resource is marked with the ``SUBSETTED`` tag (R4 §3.1.1.5.8.1) so no client mistakes it for the whole.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from ehr_core.resources.types import REMOVED_IN_R4B

__all__ = ["SUBSETTED", "subset"]

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
_ALWAYS = frozenset({"resourceType", "id", "meta"})


@cache
def _elements(resource_type: str) -> tuple[frozenset[str], frozenset[str], dict[str, frozenset[str]]]:
    """(summary keys, mandatory keys, element name → JSON keys) of a type's top-level elements."""
    # An R4 type R4B removed has no model: its summary is that of a DomainResource (the R4 isSummary flags
    # of its own elements are not in the generated table); _elements knows its DomainResource elements only.
    model = get_fhir_model_class("DomainResource" if resource_type in REMOVED_IN_R4B else resource_type)
    summary, mandatory = set(), set()
    keys: dict[str, set[str]] = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        key = field.alias or name
        element = str(extra.get("one_of_many") or key)
        keys.setdefault(element, set()).add(key)
        keys.setdefault(element, set()).add(f"_{key}")  # a primitive's id and extensions
        if extra.get("summary_element_property"):
            summary.add(key)
        if extra.get("element_required") or extra.get("one_of_many_required") or field.is_required():
            mandatory.add(key)
    return frozenset(summary), frozenset(mandatory), {k: frozenset(v) for k, v in keys.items()}


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    out = {"resourceType": resource["resourceType"]}
    if "id" in resource:
        out["id"] = resource["id"]
    out["meta"] = meta
    out.update({k: v for k, v in resource.items() if k not in _ALWAYS})
    return out


def subset(resource: dict[str, Any], summary: str | None, elements: list[str] | None) -> dict[str, Any] | None:
    """The part of ``resource`` to return, or None when it is returned whole."""
    resource_type = str(resource.get("resourceType"))
    summary_keys, mandatory, keys = _elements(resource_type)
    if summary == "true":
        kept = _ALWAYS | summary_keys | mandatory
    elif summary == "text":
        kept = _ALWAYS | mandatory | {"text"}
    elif summary == "data":
        kept = frozenset(k for k in resource if k != "text")
    elif elements is not None:
        wanted: set[str] = set()
        for element in elements:
            name = element.split(".", 1)[1] if element.startswith(f"{resource_type}.") else element
            wanted |= keys.get(name, {name})
        kept = _ALWAYS | mandatory | wanted
    else:
        return None
    if summary != "data":
        kept = kept | {f"_{key}" for key in kept}
    return _tagged({k: v for k, v in resource.items() if k in kept})
