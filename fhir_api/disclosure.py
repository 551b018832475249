"""What an answer disclosed, for its audit entry: the resources it carried (``Type/id/_history/v``) and the
patients whose records they are (DESIGN.md "Audit": who saw what).

The audit middleware (fhir_api/audit_middleware.py) learns it from the answer's body: every resource in it,
its version, and its patient (itself, or its ``subject``, ``patient`` or ``securityContext``). An interaction
that serves stored resources as they are names them itself from the rows it read (:class:`Disclosure`,
:func:`disclose`): the same names, without decoding the whole answer again on the event loop, where a search
page's second decoding cost more than any other step of the search.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from projections.resources import StoredResource

__all__ = ["Disclosure", "disclose", "disclosed", "from_body", "patient_of", "reference_of"]

#: The keys through which a resource names its patient (:func:`patient_of`).
_PATIENT_KEYS = ("subject", "patient", "securityContext")


def patient_of(resource: dict[str, Any]) -> str | None:
    """The id of the Patient whose record ``resource`` is: itself, or the Patient its subject, patient or
    securityContext references."""
    if resource.get("resourceType") == "Patient":
        value = resource.get("id")
        return value if isinstance(value, str) else None
    for key in _PATIENT_KEYS:
        target = resource.get(key)
        if isinstance(target, dict):
            reference = target.get("reference")
            if isinstance(reference, str) and reference.startswith("Patient/"):
                return reference[len("Patient/") :].split("/")[0]
    return None


def reference_of(resource: dict[str, Any]) -> str | None:
    """``Type/id/_history/version`` (``Type/id`` without a version) of a resource an answer carried."""
    kind, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(kind, str) or not isinstance(rid, str) or kind == "OperationOutcome":
        return None
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return f"{kind}/{rid}/_history/{version}" if version else f"{kind}/{rid}"


def from_body(body: bytes, entities: list[str], patients: list[str]) -> None:
    """The resources and patients of an answer's JSON body: one resource, or a Bundle's entries."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if not isinstance(document, dict):
        return
    resources: list[Any] = [document]
    if document.get("resourceType") == "Bundle":
        resources = [e.get("resource") for e in document.get("entry", []) if isinstance(e, dict)]
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "Bundle" and document.get("resourceType") == "Bundle":
            # A search entry of a batch/transaction answers a searchset inside the response Bundle: what it
            # disclosed is audited as the same search sent on its own would be (one level, never deeper).
            nested = [e.get("resource") for e in resource.get("entry", []) if isinstance(e, dict)]
            resources.extend(r for r in nested if isinstance(r, dict) and r.get("resourceType") != "Bundle")
            continue
        reference = reference_of(resource)
        if reference is not None:
            entities.append(reference)
        patient = patient_of(resource)
        if patient is not None:
            patients.append(patient)


class Disclosure:
    """The stored resources an answer serves as they were stored, named as :func:`from_body` would name them
    in the answer; ``whole`` turns False once one is served reshaped (``_summary``, ``_elements``), and then
    only the body can tell."""

    def __init__(self) -> None:
        self.entities: list[str] = []
        self.patients: list[str] = []
        self.whole = True

    def served(self, stored: StoredResource) -> None:
        self.entities.append(f"{stored.resource_type}/{stored.resource_id}/_history/{stored.version}")
        if stored.resource_type == "Patient":
            self.patients.append(stored.resource_id)
            return
        body = stored.body
        # The stored JSON is this server's own serialisation (keys never escaped): without one of the keys
        # that name a patient, decoding it could find none.
        if body is not None and any(f'"{key}"'.encode() in body for key in _PATIENT_KEYS):
            resource = orjson.loads(body)
            patient = patient_of(resource) if isinstance(resource, dict) else None
            if patient is not None:
                self.patients.append(patient)


def disclose(request: Request, disclosure: Disclosure) -> None:
    """Hand ``disclosure`` to the audit entry of ``request`` (unless a reshaped resource spoilt it)."""
    if disclosure.whole:
        request.state.ehr_disclosed = disclosure


def disclosed(state: dict[str, Any]) -> Disclosure | None:
    """The disclosure an interaction handed over in the request's ``state``, if any."""
    found = state.get("ehr_disclosed")
    return found if isinstance(found, Disclosure) else None
