"""``GET [base]/Patient/[id]/$summary``: an International Patient Summary document Bundle.

Built from the unified record (every record the master patient index links to this one): a Composition
with the required problems (11450-4), allergies (48765-2) and medications (10160-0) sections, and the
immunizations, procedures, results and vital signs sections when there is something to put in them. Each
section's narrative and each entry's ``meta.source`` say which institution and unit recorded it.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.application import format_instant
from ehr_core.resources import json as fhir_json
from fhir_api.auth import viewer_of
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import operation_input
from fhir_api.operations.unified import attributed, linked_patients, source_uri
from fhir_api.request import ServicesDep, base_url
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.access import Viewer
from projections.identity import everything_page

router = APIRouter()

LOINC = "http://loinc.org"
# (code, title, required, types)
SECTIONS: list[tuple[str, str, bool, tuple[str, ...]]] = [
    ("11450-4", "Problem list", True, ("Condition",)),
    ("48765-2", "Allergies and intolerances", True, ("AllergyIntolerance",)),
    ("10160-0", "Medication summary", True, ("MedicationRequest", "MedicationStatement")),
    ("11369-6", "Immunizations", False, ("Immunization",)),
    ("47519-4", "History of procedures", False, ("Procedure",)),
    ("30954-2", "Diagnostic results", False, ("DiagnosticReport", "Observation:laboratory")),
    ("8716-3", "Vital signs", False, ("Observation:vital-signs",)),
]
_TYPES = [
    "Condition",
    "AllergyIntolerance",
    "MedicationRequest",
    "MedicationStatement",
    "Immunization",
    "Procedure",
    "DiagnosticReport",
    "Observation",
]


def _label(resource: dict[str, Any]) -> str:
    for key in ("code", "medicationCodeableConcept", "vaccineCode"):
        concept = resource.get(key)
        if isinstance(concept, dict):
            text = concept.get("text")
            codings = concept.get("coding") or []
            if not text and codings:
                first = codings[0]
                text = " ".join(str(first.get(k)) for k in ("code", "display") if first.get(k))
            if text:
                when = (
                    resource.get("recordedDate")
                    or resource.get("authoredOn")
                    or resource.get("occurrenceDateTime")
                    or resource.get("effectiveDateTime")
                    or resource.get("performedDateTime")
                )
                return f"{text} ({str(when)[:10]})" if when else str(text)
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _category(resource: dict[str, Any]) -> str:
    for category in resource.get("category") or []:
        for coding in category.get("coding") or [] if isinstance(category, dict) else []:
            if coding.get("code"):
                return str(coding["code"])
    return ""


def _section_of(resource: dict[str, Any]) -> str | None:
    rtype = resource.get("resourceType")
    for code, _, _, types in SECTIONS:
        for kind in types:
            name, _, category = kind.partition(":")
            if name != rtype:
                continue
            if not category or _category(resource) == category:
                return code
            if rtype == "Observation" and category == "laboratory" and _category(resource) != "vital-signs":
                return code
    return None


def summary(services: Services, base: str, patient_id: str, viewer: Viewer | None = None) -> bytes:
    services.identity_current()
    rows: list[tuple[int, str, str, bytes, str, str | None]] = []
    with services.views.read() as tx:
        patients = linked_patients(services, tx, patient_id)
        after = 0
        while True:
            page = everything_page(tx, patients, types=["Patient", *_TYPES], after=after, limit=1000, viewer=viewer)
            rows.extend(page)
            if len(page) < 1000:
                break
            after = page[-1][0]
    now = datetime.now(UTC)
    sections: dict[str, list[tuple[str, str]]] = {code: [] for code, *_ in SECTIONS}
    entries: list[dict[str, Any]] = []
    subject = None
    for _, rtype, rid, body, institution, unit in rows:
        served = attributed(body, institution, unit)
        if rtype == "Patient":
            if rid == patient_id:
                subject = {"fullUrl": f"{base}/Patient/{rid}", "resource": orjson.Fragment(served)}
            continue
        resource = fhir_json.loads(body)
        code = _section_of(resource)
        if code is None:
            continue
        where = f"{institution}, {unit}" if unit else institution
        sections[code].append((f"{rtype}/{rid}", f"{_label(resource)} [{where}]"))
        entries.append({"fullUrl": f"{base}/{rtype}/{rid}", "resource": orjson.Fragment(served)})
    composition_sections = []
    for code, title, required, _ in SECTIONS:
        items = sections[code]
        if not items and not required:
            continue
        section: dict[str, Any] = {
            "title": title,
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "text": {
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml">'
                + (
                    "<ul>" + "".join(f"<li>{html.escape(text)}</li>" for _, text in items) + "</ul>"
                    if items
                    else "<p>No information available</p>"
                )
                + "</div>",
            },
        }
        if items:
            section["entry"] = [{"reference": reference} for reference, _ in items]
        else:
            section["emptyReason"] = {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable"}]
            }
        composition_sections.append(section)
    composition_id = str(uuid4())
    composition = {
        "resourceType": "Composition",
        "id": composition_id,
        "meta": {"source": source_uri("ehr-core", None)},
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": format_instant(now),
        "author": [{"display": "ehr-core unified record (IMSS, ISSSTE, IMSS-Bienestar)"}],
        "title": f"Patient Summary as of {now:%Y-%m-%d}",
        "section": composition_sections,
    }
    all_entries: list[dict[str, Any]] = [{"fullUrl": f"urn:uuid:{composition_id}", "resource": composition}]
    if subject is not None:
        all_entries.append(subject)
    all_entries.extend(entries)
    document = {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid4()}"},
        "type": "document",
        "timestamp": format_instant(now),
        "entry": all_entries,
    }
    return orjson.dumps(document)


@router.get("/Patient/{patient_id}/$summary", summary="Patient $summary (International Patient Summary)")
@router.post("/Patient/{patient_id}/$summary", summary="Patient $summary (POST, Parameters body)")
async def patient_summary(patient_id: str, request: Request, services: ServicesDep) -> Response:
    await operation_input(request, by_id("summary"))  # none defined: any parameter is refused
    body = await in_thread(summary, services, base_url(request), patient_id, viewer_of(request))
    return Response(body, media_type=FHIR_JSON)
