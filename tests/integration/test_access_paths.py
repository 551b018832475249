"""Disclosure paths beyond the plain read paths, with auth ON (both backends).

- Chained parameters and ``_has`` (R4 §3.1.1.4.13-14) pass through other resources; a match through a
  resource the caller may not see would tell it what that resource contains, so the policy holds for each
  resource a chain or ``_has`` passes through.
- The master patient index's operations (``$match``, ``$ihe-pix``, ``Person/$review``) disclose a Patient
  record, and the identifiers it carries, only when the caller may read that record (own, consent,
  break-the-glass).
- The server's AuditEvent and Provenance searches list only the caller's institution's own actions and
  entries about records it may read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.auth import mint_development_token
from tests.support.access import secured_client

FHIR = {"Content-Type": "application/fhir+json"}
GLASS = {"X-EHR-Break-Glass": "paciente inconsciente en urgencias"}
CURP = "urn:oid:2.16.840.1.113883.4.629"
IMSS_MRN = "urn:ehr-core:sid:imss:mrn"
ISSSTE_MRN = "urn:ehr-core:sid:issste:mrn"


@pytest.fixture
def secured(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    with secured_client(settings, tmp_path / "ehr-data") as opened:
        yield opened


def _auth(settings: Settings, institution: str) -> dict[str, str]:
    claims = {"institution": institution, "user": f"dr.{institution.lower()}", "role": "physician",
              "scope": "user/*.cruds"}  # fmt: skip
    return {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


def _create(client: TestClient, headers: dict[str, str], resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR | headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _observation(patient: str, code: str) -> dict[str, Any]:
    coding = [{"system": "urn:test", "code": code}]
    return {"resourceType": "Observation", "status": "final", "code": {"coding": coding},
            "subject": {"reference": f"Patient/{patient}"}}  # fmt: skip


def _ids(client: TestClient, url: str, headers: dict[str, str]) -> tuple[list[str], int]:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    bundle = response.json()
    ids = [e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]
    return ids, int(bundle["total"])


def test_chain_does_not_pass_through_hidden_resources(secured: tuple[TestClient, Settings]) -> None:
    client, settings = secured
    imss, issste = _auth(settings, "IMSS"), _auth(settings, "ISSSTE")
    # IMSS's patient; ISSSTE records an Observation about them (its own, so visible to it).
    pid = _create(client, imss, {"resourceType": "Patient", "name": [{"family": "Juarez"}]})
    own = _create(client, issste, _observation(pid, "glucose"))
    url = "/fhir/Observation?subject:Patient.name=Juarez&_total=accurate"
    # ISSSTE may not read the Patient: the chain must not tell it the hidden Patient's name.
    assert client.get(f"/fhir/Patient/{pid}", headers=issste).status_code == 403
    assert _ids(client, url, issste) == ([], 0)
    assert _ids(client, "/fhir/Observation?subject:Patient.name=Other&_total=accurate", issste) == ([], 0)
    # The same search matches once the caller may see the Patient (break-the-glass lifts the rule).
    assert _ids(client, url, issste | GLASS) == ([own], 1)
    # Its own Observation stays findable by plain parameters.
    assert _ids(client, f"/fhir/Observation?subject=Patient/{pid}&_total=accurate", issste) == ([own], 1)


def test_has_does_not_pass_through_hidden_resources(secured: tuple[TestClient, Settings]) -> None:
    client, settings = secured
    imss, issste = _auth(settings, "IMSS"), _auth(settings, "ISSSTE")
    # ISSSTE's patient; IMSS records a sensitive Observation about them, which ISSSTE may not read.
    pid = _create(client, issste, {"resourceType": "Patient", "name": [{"family": "Lopez"}]})
    hidden = _create(client, imss, _observation(pid, "B20"))
    assert client.get(f"/fhir/Observation/{hidden}", headers=issste).status_code == 403
    url = "/fhir/Patient?_has:Observation:subject:code=urn:test|B20&_total=accurate"
    assert _ids(client, url, issste) == ([], 0)
    assert _ids(client, url, issste | GLASS) == ([pid], 1)


def _patient(family: str, curp: str, mrn: tuple[str, str] | None = None) -> dict[str, Any]:
    identifiers = [{"system": CURP, "value": curp}] + ([{"system": mrn[0], "value": mrn[1]}] if mrn else [])
    return {"resourceType": "Patient", "identifier": identifiers, "name": [{"family": family, "given": ["Ramón"]}],
            "gender": "male", "birthDate": "1974-05-24"}  # fmt: skip


def _consent(patient: str, institution: str) -> dict[str, Any]:
    actor = {"role": {"text": "reader"},
             "reference": {"identifier": {"system": "urn:ehr-core:institution", "value": institution}}}  # fmt: skip
    return {"resourceType": "Consent", "status": "active", "patient": {"reference": f"Patient/{patient}"},
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "policyRule": {"text": "LGPDPPSO"}, "provision": {"type": "permit", "actor": [actor]}}  # fmt: skip


def _matched(client: TestClient, headers: dict[str, str]) -> tuple[set[str], int, str | None]:
    searched = _patient("Aguilar Mora", "AAMR740524HOCBRN08")
    query = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": searched}]}
    response = client.post("/fhir/Patient/$match", json=query, headers=FHIR | headers)
    assert response.status_code == 200, response.text
    bundle = response.json()
    ids = {e["resource"]["id"] for e in bundle.get("entry", [])}
    return ids, int(bundle["total"]), response.headers.get("x-ehr-break-glass")


def _pix(client: TestClient, source: str, headers: dict[str, str]) -> tuple[set[str], set[str]]:
    response = client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": source}, headers=headers)
    assert response.status_code == 200, response.text
    parameters = response.json()["parameter"]
    values = {p["valueIdentifier"]["value"] for p in parameters if p["name"] == "targetIdentifier"}
    records = {p["valueReference"]["reference"] for p in parameters if p["name"] == "targetId"}
    return values, records


def test_match_and_pix_disclose_only_readable_records(secured: tuple[TestClient, Settings]) -> None:
    client, settings = secured
    imss, issste = _auth(settings, "IMSS"), _auth(settings, "ISSSTE")
    # One person, a record at each institution, linked by CURP by the master patient index.
    at_imss = _create(client, imss, _patient("Aguilar Mora", "AAMR740524HOCBRN08", (IMSS_MRN, "IMSS-1")))
    at_issste = _create(client, issste, _patient("Aguilar", "AAMR740524HOCBRN08", (ISSSTE_MRN, "ISSSTE-9")))
    # $match: the caller's own record only, counted as such.
    assert _matched(client, issste) == ({at_issste}, 1, None)
    assert _matched(client, imss) == ({at_imss}, 1, None)
    # $ihe-pix: another institution's identifier does not resolve (404, as if absent) ...
    hidden = client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{IMSS_MRN}|IMSS-1"}, headers=issste)
    assert hidden.status_code == 404 and "Aguilar" not in hidden.text
    # ... and from its own record, the linked IMSS record and its identifiers stay undisclosed.
    assert _pix(client, f"{ISSSTE_MRN}|ISSSTE-9", issste) == ({"AAMR740524HOCBRN08"}, {f"Patient/{at_issste}"})
    # Break-the-glass discloses both, flagged.
    assert _matched(client, issste | GLASS) == ({at_imss, at_issste}, 2, "granted")
    # The patient consents, on the IMSS record, to ISSSTE reading it: both records, both identifiers.
    assert client.post("/fhir/Consent", json=_consent(at_imss, "ISSSTE"), headers=FHIR | imss).status_code == 201
    assert _matched(client, issste) == ({at_imss, at_issste}, 2, None)
    values, records = _pix(client, f"{IMSS_MRN}|IMSS-1", issste)
    assert values == {"AAMR740524HOCBRN08", "ISSSTE-9"} and records == {f"Patient/{at_imss}", f"Patient/{at_issste}"}
    # The consent opens IMSS's record to ISSSTE, not ISSSTE's to IMSS.
    assert _pix(client, f"{IMSS_MRN}|IMSS-1", imss) == ({"AAMR740524HOCBRN08"}, {f"Patient/{at_imss}"})


def test_review_queue_lists_only_readable_records(secured: tuple[TestClient, Settings]) -> None:
    client, settings = secured
    imss, issste = _auth(settings, "IMSS"), _auth(settings, "ISSSTE")
    # A placeholder CURP never links: the second record becomes a possible match to review.
    _create(client, imss, _patient("Pérez López", "XXXX999999XXXXXX99"))
    candidate = _create(client, issste, _patient("Pérez López", "XXXX999999XXXXXX99"))

    def queue(headers: dict[str, str]) -> set[str]:
        response = client.get("/fhir/Person/$review", headers=headers)
        assert response.status_code == 200, response.text
        parts = [part for item in response.json().get("parameter", []) for part in item["part"]]
        return {part["valueReference"]["reference"] for part in parts if part["name"] == "record"}

    assert queue(issste) == {f"Patient/{candidate}"}
    assert queue(imss) == set()


def _entries(client: TestClient, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json()["entry"]]


def test_audit_and_provenance_searches_follow_the_access_policy(secured: tuple[TestClient, Settings]) -> None:
    client, settings = secured
    imss, issste = _auth(settings, "IMSS"), _auth(settings, "ISSSTE")
    hidden = _create(client, imss, {"resourceType": "Patient", "name": [{"family": "Juarez"}]})
    assert client.get(f"/fhir/Patient/{hidden}", headers=imss).status_code == 200
    own = _create(client, issste, {"resourceType": "Patient", "name": [{"family": "Lopez"}]})
    assert client.get(f"/fhir/Patient/{own}", headers=issste).status_code == 200
    about_hidden = f"Patient/{hidden}"
    # IMSS sees its own trail about its patient; ISSSTE neither sees it nor its Provenance.
    assert _entries(client, f"/fhir/AuditEvent?patient={about_hidden}", imss)
    assert _entries(client, f"/fhir/Provenance?target={about_hidden}", imss)
    assert _entries(client, f"/fhir/AuditEvent?patient={about_hidden}", issste) == []
    assert _entries(client, f"/fhir/Provenance?target={about_hidden}", issste) == []
    # An unrestricted search lists ISSSTE's own actions and nothing about IMSS's patient.
    trail = _entries(client, "/fhir/AuditEvent?_count=1000", issste)
    assert trail and about_hidden not in str(trail)
    assert any(f"Patient/{own}" in str(entry) for entry in trail)
    provenances = _entries(client, "/fhir/Provenance?_count=1000", issste)
    assert provenances and about_hidden not in str(provenances)
    # Read by id, the same rule: 403 with an OperationOutcome.
    for kind, param in (("AuditEvent", "patient"), ("Provenance", "target")):
        entry_id = _entries(client, f"/fhir/{kind}?{param}={about_hidden}", imss)[0]["id"]
        denied = client.get(f"/fhir/{kind}/{entry_id}", headers=issste)
        assert denied.status_code == 403 and denied.json()["resourceType"] == "OperationOutcome", kind
        assert client.get(f"/fhir/{kind}/{entry_id}", headers=imss).status_code == 200
    # Break-the-glass opens records for care, not another institution's trail.
    assert _entries(client, f"/fhir/AuditEvent?patient={about_hidden}", issste | GLASS) == []
    # The patient consents to ISSSTE reading the record: its trail and Provenance open with it.
    assert client.post("/fhir/Consent", json=_consent(hidden, "ISSSTE"), headers=FHIR | imss).status_code == 201
    assert _entries(client, f"/fhir/AuditEvent?patient={about_hidden}", issste)
    assert _entries(client, f"/fhir/Provenance?target={about_hidden}", issste)
