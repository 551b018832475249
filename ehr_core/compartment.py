"""The patient compartment of a resource (R4 CompartmentDefinition ``patient``).

The compartment decides whose data a resource is: which patient's key encrypts it (the first id found),
whose ``$everything`` returns it, whose consent governs it.

Binary is in no compartment of R4's Patient CompartmentDefinition, yet a PDF report or a scanned
consent form is as much a patient's record as an Observation. R4 binary.html "Security": a Binary's
``securityContext`` names the resource whose access rules apply to it. So a Binary whose securityContext
is ``Patient/x`` is placed in x's compartment (x's key encrypts it, x's consent governs it); one whose
securityContext is another resource takes that resource's compartment at the time of writing
(:meth:`ehr_core.application.RecordApplication.security_context_compartment`). Without a securityContext a
Binary is in no compartment and stays with the institution that recorded it. The table,
:data:`ehr_core.spec.patient_compartment.PATHS`, is generated from the R4 Patient CompartmentDefinition and
the search parameters it names, as element paths (``make spec``). Each event records the compartment it was
written with, so a change of the table moves only new writes: stored events keep their key and compartment.
"""

from __future__ import annotations

import re
from typing import Any

from ehr_core.spec.patient_compartment import PATHS

__all__ = ["compartment_types", "patient_compartment", "security_context_target"]


def _walk(node: Any, steps: list[str]) -> list[Any]:
    if isinstance(node, list):
        return [found for item in node for found in _walk(item, steps)]
    if not steps:
        return [node]
    if not isinstance(node, dict) or steps[0] not in node:
        return []
    return _walk(node[steps[0]], steps[1:])


def _patient_id(reference: Any) -> str | None:
    if not isinstance(reference, dict):
        return None
    target = reference.get("reference")
    if not isinstance(target, str):
        return None
    parts = target.split("/")
    # Relative (Patient/1), absolute (https://x/fhir/Patient/1) and versioned (Patient/1/_history/2).
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    # Only an R4 id (1-64 of [A-Za-z0-9-.]) can name a Patient: anything else points at no record, and would
    # become a compartment (a data key, index rows) of any length the client chose.
    if len(parts) >= 2 and parts[-2] == "Patient" and _ID.fullmatch(parts[-1]):
        return parts[-1]
    return None


_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_RELATIVE = re.compile(r"([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})")


def security_context_target(resource: dict[str, Any]) -> tuple[str, str] | None:
    """(type, id) a Binary's ``securityContext`` names by a relative reference, other than a Patient (whose
    compartment :func:`patient_compartment` already gives); None otherwise."""
    if resource.get("resourceType") != "Binary":
        return None
    context = resource.get("securityContext")
    target = context.get("reference") if isinstance(context, dict) else None
    match = _RELATIVE.fullmatch(target) if isinstance(target, str) else None
    if match is None or match.group(1) == "Patient":
        return None
    return match.group(1), match.group(2)


def patient_compartment(resource: dict[str, Any]) -> list[str]:
    """Ids of the patients whose compartment holds ``resource`` (a Patient is in its own)."""
    resource_type = resource.get("resourceType")
    found: list[str] = []
    if resource_type == "Patient" and isinstance(resource.get("id"), str):
        # Its own first, so its key is its own: the spec's ``link`` parameter adds the Patients it links to.
        found.append(resource["id"])
    if resource_type == "Binary":
        patient = _patient_id(resource.get("securityContext"))
        if patient is not None:
            found.append(patient)
    for path in PATHS.get(str(resource_type), ()):
        for reference in _walk(resource, path.split(".")):
            patient = _patient_id(reference)
            if patient is not None and patient not in found:
                found.append(patient)
    return found


def compartment_types() -> frozenset[str]:
    """The resource types the Patient compartment can hold (those its CompartmentDefinition lists)."""
    return frozenset(PATHS)
