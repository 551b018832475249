"""``GET [base]/Patient/[id]/$access-grants``: who may read a patient's record besides the institution that
recorded it, why, and until when — the access policy's grants made visible (DESIGN.md "Access").

The answer is a ``Parameters`` resource, one ``grant`` per (institution, source) with parts ``patient``,
``institution`` (``*``: every institution), ``basis`` (``consent`` or ``referral``), ``source`` (a Reference
to the Consent or the referral Task), ``start``/``end`` (absent: open) and ``active`` (valid now), and one
``denial`` per deny provision in force (``institution``, ``source``, ``kind``: ``class``/``code``/
``_security``, ``system``, ``code``). It covers every Patient record the master patient index links to this
one (the unified record), each grant naming its record.

Who may ask: whoever may read the Patient record (the operation is decided as a read of it: its institution,
a grantee, break-the-glass), and the patient through a patient-facing app (patient scope).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import NotFound
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import operation_input
from fhir_api.request import ServicesDep
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.access import access_denials, access_grants
from projections.identity import IdentityIndex
from projections.resources import ResourceViews

router = APIRouter()


@router.get("/Patient/{patient_id}/$access-grants", summary="who may read this patient's record, why, until when")
@router.post("/Patient/{patient_id}/$access-grants", summary="access grants of a patient's record (POST)")
async def grants_of(patient_id: str, request: Request, services: ServicesDep) -> Response:
    await operation_input(request, by_id("access-grants"))  # it takes no parameter
    body = await in_thread(_grants, services, patient_id)
    return Response(orjson.dumps(body), media_type=FHIR_JSON)


def _part(name: str, kind: str, value: Any) -> dict[str, Any]:
    return {"name": name, kind: value}


def _grants(services: Services, patient_id: str) -> dict[str, Any]:
    services.identity_current()
    now = datetime.now(UTC).isoformat()
    with services.views.read() as tx:
        stored = ResourceViews.read(tx, "Patient", patient_id)
        if stored is None or stored.body is None:
            raise NotFound(f"Patient/{patient_id} is not known")
        records = IdentityIndex.linked_records(tx, patient_id)
        grants = access_grants(tx, records)
        denials = access_denials(tx, records)
    parameters: list[dict[str, Any]] = []
    for patient, institution, source_type, source_id, start, end in grants:
        parts = [
            _part("patient", "valueReference", {"reference": f"Patient/{patient}"}),
            _part("institution", "valueString", institution),
            _part("basis", "valueCode", "referral" if source_type == "Task" else "consent"),
            _part("source", "valueReference", {"reference": f"{source_type}/{source_id}"}),
        ]
        if start:
            parts.append(_part("start", "valueString", str(start)))
        if end:
            parts.append(_part("end", "valueString", str(end)))
        active = (not start or str(start) <= now) and (not end or str(end) >= now)
        parts.append(_part("active", "valueBoolean", active))
        parameters.append({"name": "grant", "part": parts})
    for patient, institution, consent_id, kind, system, code in denials:
        parts = [
            _part("patient", "valueReference", {"reference": f"Patient/{patient}"}),
            _part("institution", "valueString", institution),
            _part("source", "valueReference", {"reference": f"Consent/{consent_id}"}),
            _part("kind", "valueCode", kind),
        ]
        if system:
            parts.append(_part("system", "valueUri", system))
        parts.append(_part("code", "valueCode", code))
        parameters.append({"name": "denial", "part": parts})
    return {"resourceType": "Parameters", "parameter": parameters}
