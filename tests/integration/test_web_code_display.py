"""The record page names a code by its display in the terminology store when the resource carries none
(neither ``text`` nor any ``display``), on every backend; a display the resource gives is kept, and a code of
a system the store does not hold is shown as it is.
"""

from __future__ import annotations

import re
from html import unescape

from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from tests.support.access import staff_headers

FHIR = {"content-type": "application/fhir+json"}
ICD_10 = "http://hl7.org/fhir/sid/icd-10"
DIABETES = "Diabetes mellitus tipo 2, sin complicaciones"
HYPERTENSION = "Hipertensión esencial (primaria)"


def _condition(patient: str, system: str, code: str, display: str | None = None) -> dict[str, object]:
    coding = {"system": system, "code": code} | ({"display": display} if display else {})
    return {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{patient}"},
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "code": {"coding": [coding]},
        "recordedDate": "2026-01-02",
    }


def test_the_record_names_bare_codes_from_the_terminology_store(
    secured_client: tuple[TestClient, Settings],
) -> None:
    client, settings = secured_client
    staff = staff_headers(settings, "IMSS") | FHIR
    code_system = {
        "resourceType": "CodeSystem",
        "id": "cie-10-sample",
        "url": ICD_10,
        "status": "active",
        "content": "fragment",
        "concept": [{"code": "E11.9", "display": DIABETES}, {"code": "I10", "display": HYPERTENSION}],
    }
    assert client.put("/fhir/CodeSystem/cie-10-sample", json=code_system, headers=staff).status_code == 201
    assert (
        client.put("/fhir/Patient/d1", json={"resourceType": "Patient", "id": "d1"}, headers=staff).status_code == 201
    )
    for condition in (
        _condition("d1", ICD_10, "E11.9"),
        _condition("d1", ICD_10, "I10", "Hipertensión (como la registró la unidad)"),
        _condition("d1", "http://example.org/local-codes", "X-17"),
    ):
        assert client.post("/fhir/Condition", json=condition, headers=staff).status_code == 201
    token = staff["Authorization"].split()[1]
    assert client.post("/web/login", data={"token": token, "next": "/web/"}, follow_redirects=False).status_code == 303
    page = client.get("/web/patients/d1")
    assert page.status_code == 200, page.text
    problems = page.text.split('data-testid="problems"', 1)[1].split("</ul>", 1)[0]
    shown = sorted(unescape(text) for text in re.findall(r"<strong>(.*?)</strong>", problems))
    assert shown == sorted([DIABETES, "Hipertensión (como la registró la unidad)", "X-17"]), problems
    # What is stored is untouched: the display is the page's, not the record's.
    stored = client.get("/fhir/Condition?code=" + ICD_10 + "|E11.9", headers=staff).json()["entry"][0]["resource"]
    assert "display" not in stored["code"]["coding"][0]
