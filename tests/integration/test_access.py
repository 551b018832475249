"""The access policy across institutions, with auth ON (both backends).

Matrix: reader institution (the recorder, another) x consent state (none, active, expired, not yet valid,
revoked, for a third institution) x break-the-glass (absent, present) x interaction (read, vread,
instance history, $everything). Zero disclosures the policy forbids; every decision audited.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from ehr_core.audit import AuditRecord
from ehr_core.demo.people import make_curp
from ehr_core.identity.identifiers import CURP_SYSTEM
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.auth import mint_development_token
from fhir_api.services import Services
from projections.identity import IdentityIndex

FHIR = {"Content-Type": "application/fhir+json"}
INSTITUTION = "urn:ehr-core:institution"
CONSENTS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "active": {"status": "active", "period": {"start": "2020-01-01T00:00:00+00:00"}},
    "expired": {
        "status": "active",
        "period": {"start": "2020-01-01T00:00:00+00:00", "end": "2021-01-01T00:00:00+00:00"},
    },
    "future": {"status": "active", "period": {"start": "2999-01-01T00:00:00+00:00"}},
    "revoked": {"status": "inactive", "period": {"start": "2020-01-01T00:00:00+00:00"}},
    "third-party": {"status": "active", "actor": "IMSS-BIENESTAR"},
}


@pytest.fixture
def secured(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Services, Settings]]:
    configured = settings.model_copy(update={"auth": "required", "data_dir": tmp_path / "ehr-data"})
    services = Services.open(configured)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client, services, configured
    finally:
        services.close()


def _auth(settings: Settings, institution: str, user: str) -> dict[str, str]:
    claims = {"institution": institution, "user": user, "role": "physician", "scope": "user/*.cruds"}
    return {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


def _consent(patient: str, state: dict[str, Any]) -> dict[str, Any]:
    provision: dict[str, Any] = {
        "type": "permit",
        "actor": [{"role": {"text": "reader"}, "reference": {"identifier": {"system": INSTITUTION,
                                                                           "value": state.get("actor", "ISSSTE")}}}],
    }  # fmt: skip
    if "period" in state:
        provision["period"] = state["period"]
    return {
        "resourceType": "Consent",
        "status": state["status"],
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {"text": "LGPDPPSO"},
        "provision": provision,
    }


@pytest.mark.parametrize("consent", list(CONSENTS))
def test_access_matrix(secured: tuple[TestClient, Services, Settings], consent: str) -> None:
    client, services, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Ruiz"}]},
                      headers=FHIR | imss).json()["id"]  # fmt: skip
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "glucosa"},
           "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    oid = client.post("/fhir/Observation", json=obs, headers=FHIR | imss).json()["id"]
    state = CONSENTS[consent]
    if state is not None:
        response = client.post("/fhir/Consent", json=_consent(pid, state), headers=FHIR | imss)
        assert response.status_code == 201, response.text
    paths = {
        "read": f"/fhir/Observation/{oid}",
        "read-patient": f"/fhir/Patient/{pid}",
        "vread": f"/fhir/Observation/{oid}/_history/1",
        "history": f"/fhir/Observation/{oid}/_history",
        "everything": f"/fhir/Patient/{pid}/$everything",
    }
    consented = consent == "active"
    outcomes: list[tuple[str, str, bool, int]] = []
    for reader, headers in (("IMSS", imss), ("ISSSTE", issste)):
        for glass in (False, True):
            extra = {"X-EHR-Break-Glass": "paciente inconsciente en urgencias"} if glass else {}
            for name, path in paths.items():
                response = client.get(path, headers=headers | extra)
                permitted = reader == "IMSS" or consented or glass
                outcomes.append((reader, name, glass, response.status_code))
                if permitted:
                    assert response.status_code == 200, (consent, reader, glass, name, response.text[:300])
                else:
                    assert response.status_code == 403, (consent, reader, glass, name)
                    assert "glucosa" not in response.text and "Ruiz" not in response.text
                    assert "Consent" in response.json()["issue"][0]["diagnostics"]
                flagged = response.headers.get("x-ehr-break-glass") == "granted"
                assert flagged == (glass and reader == "ISSSTE" and not consented), (consent, reader, name)
    # Break-the-glass grants are listed for review.
    with services.views.read() as tx:
        logged = tx.execute("SELECT COUNT(*) FROM break_glass_log WHERE institution = 'ISSSTE'").fetchone()
    assert logged is not None and logged[0] == (0 if consented else len(paths))
    # Every decision is audited: one audit entry per request, with the reader and the status.
    assert services.compliance is not None
    expected = sorted((r, s) for r, _, _, s in outcomes)
    deadline = time.monotonic() + 20
    while True:
        services.compliance.audit_views_current()
        events = services.compliance.audit_log.recorder.select_notifications(start=1, limit=10_000)
        entries = [
            e.entry for e in map(services.compliance.audit_log.mapper.to_domain_event, events)
            if isinstance(e, AuditRecord.Recorded) and e.entry.get("method") == "GET"
        ]  # fmt: skip
        seen = sorted((e["institution"], e["status"]) for e in entries if e["user"] in ("dr.imss", "dr.issste"))
        if seen == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert seen == expected


def test_revoking_a_consent_stops_access(secured: tuple[TestClient, Services, Settings]) -> None:
    client, _, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR | imss).json()["id"]
    consent = client.post("/fhir/Consent", json=_consent(pid, CONSENTS["active"] or {}), headers=FHIR | imss).json()
    assert client.get(f"/fhir/Patient/{pid}", headers=issste).status_code == 200
    consent["status"] = "inactive"
    assert client.put(f"/fhir/Consent/{consent['id']}", json=consent, headers=FHIR | imss).status_code == 200
    assert client.get(f"/fhir/Patient/{pid}", headers=issste).status_code == 403
    # A record the other institution wrote itself stays readable to it.
    mine = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    own = client.post("/fhir/Observation", json=mine, headers=FHIR | issste)
    assert client.get(f"/fhir/Observation/{own.json()['id']}", headers=issste).status_code == 200


def test_the_unified_record_needs_consent_for_every_linked_record(
    secured: tuple[TestClient, Services, Settings],
) -> None:
    """$everything returns the records the master patient index links across institutions, so the decision
    covers them all: ISSSTE's own Patient record, linked by CURP to IMSS's, does not open IMSS's records."""
    client, services, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    born = date(1970, 3, 21)
    curp = make_curp(["Lucía"], "Mendoza", "Ríos", "M", born, "JC", random.Random(7))
    person = {"resourceType": "Patient", "identifier": [{"system": CURP_SYSTEM, "value": curp}],
              "name": [{"family": "Mendoza Ríos", "given": ["Lucía"]}], "gender": "female",
              "birthDate": born.isoformat()}  # fmt: skip
    at_imss = client.post("/fhir/Patient", json=person, headers=FHIR | imss).json()["id"]
    at_issste = client.post("/fhir/Patient", json=person, headers=FHIR | issste).json()["id"]
    secret = {"resourceType": "Observation", "status": "final", "code": {"text": "VIH carga viral"},
              "subject": {"reference": f"Patient/{at_imss}"}}  # fmt: skip
    assert client.post("/fhir/Observation", json=secret, headers=FHIR | imss).status_code == 201
    services.identity_current()
    with services.views.read() as tx:
        assert set(IdentityIndex.linked_records(tx, at_issste)) == {at_issste, at_imss}  # one person
    denied = client.get(f"/fhir/Patient/{at_issste}/$everything", headers=issste)
    assert denied.status_code == 403 and "VIH" not in denied.text
    assert "IMSS" in denied.json()["issue"][0]["diagnostics"]
    # The golden record merges both records' demographics: the same decision.
    with services.views.read() as tx:
        golden = IdentityIndex.person_of(tx, at_issste)
    assert client.get(f"/fhir/Person/{golden}", headers=issste).status_code == 403
    assert client.get(f"/fhir/Patient/{at_issste}/$person", headers=issste).status_code == 403
    # Each record alone stays readable to its recorder; the unified record of either is everyone's records.
    assert client.get(f"/fhir/Patient/{at_issste}", headers=issste).status_code == 200
    assert client.get(f"/fhir/Patient/{at_imss}/$everything", headers=imss).status_code == 403
    # The patient consents, on the IMSS record, to ISSSTE reading it: the unified record opens to ISSSTE.
    consent = _consent(at_imss, CONSENTS["active"] or {})
    assert client.post("/fhir/Consent", json=consent, headers=FHIR | imss).status_code == 201
    opened = client.get(f"/fhir/Patient/{at_issste}/$everything", headers=issste)
    assert opened.status_code == 200 and "VIH" in opened.text
    person = client.get(f"/fhir/Person/{golden}", headers=issste)
    assert person.status_code == 200 and "Mendoza" in person.text
    ids = {e["resource"]["id"] for e in opened.json()["entry"]}
    assert {at_imss, at_issste} <= ids


def test_bundle_get_entries_follow_the_access_policy(secured: tuple[TestClient, Services, Settings]) -> None:
    """A batch or transaction GET entry is a read: another institution's record needs consent (403 otherwise)
    and a scope must grant the type. In a batch the other entries are answered anyway; a transaction fails
    as a whole with the refused entry's 403 (R4 §3.1.0.11.2; this test used to expect a 200
    transaction-response holding a 403 entry, which the spec does not allow)."""
    client, _, settings = secured
    imss, issste = _auth(settings, "IMSS", "dra.lopez"), _auth(settings, "ISSSTE", "dr.ruiz")
    patient = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"}, headers=imss)
    assert patient.status_code == 201
    own = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"}, headers=issste).json()
    url = f"Patient/{patient.json()['id']}"
    for kind in ("batch", "transaction"):
        bundle = {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [
                {"request": {"method": "GET", "url": url}},
                {"request": {"method": "GET", "url": f"Patient/{own['id']}"}},
            ],
        }
        answer = client.post("/fhir", json=bundle, headers=issste)
        if kind == "transaction":
            assert answer.status_code == 403, answer.text
            issues = answer.json()["issue"]
            assert len(issues) == 1 and issues[0]["expression"] == ["Bundle.entry[0]"]
            assert "female" not in answer.text
            # The recording institution reads its own record, and is refused ISSSTE's (entry 1).
            theirs = client.post("/fhir", json=bundle, headers=imss)
            assert theirs.status_code == 403 and theirs.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
            alone = bundle | {"entry": bundle["entry"][:1]}
            mine = client.post("/fhir", json=alone, headers=imss)
            assert mine.status_code == 200, mine.text
            assert mine.json()["entry"][0]["resource"]["id"] == patient.json()["id"]
            continue
        assert answer.status_code == 200, answer.text
        refused, allowed = answer.json()["entry"]
        assert refused["response"]["status"].startswith("403")
        assert "resource" not in refused and refused["response"]["outcome"]["resourceType"] == "OperationOutcome"
        assert allowed["response"]["status"].startswith("200") and allowed["resource"]["id"] == own["id"]
        # The recording institution reads it in a Bundle as it would directly.
        mine = client.post("/fhir", json=bundle, headers=imss).json()["entry"][0]
        assert mine["response"]["status"].startswith("200") and mine["resource"]["id"] == patient.json()["id"]
    # A token that may write Bundles but not read (``user/*.cu``): its GET entry is refused, whoever recorded it.
    claims = {"institution": "IMSS", "user": "interface", "role": "system", "scope": "user/*.cu"}
    narrow = {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": url}}]}
    answer = client.post("/fhir", json=bundle, headers=narrow)
    assert answer.status_code == 200, answer.text
    assert answer.json()["entry"][0]["response"]["status"].startswith("403")


def test_a_filtered_search_is_audited_as_filtered(secured: tuple[TestClient, Services, Settings]) -> None:
    client, services, settings = secured
    imss, issste = _auth(settings, "IMSS", "dra.lopez"), _auth(settings, "ISSSTE", "dr.ruiz")
    assert client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"}, headers=imss).is_success
    found = client.get("/fhir/Patient", params={"gender": "female"}, headers=issste).json()
    assert found["total"] == 0  # IMSS's record, no consent: withheld, and not counted
    assert services.compliance is not None
    services.compliance.audit_views_current()
    with services.views.read() as tx:
        rows = tx.execute("SELECT entry FROM audit_entries WHERE interaction = 'search-type'").fetchall()
    entries = [orjson.loads(row[0]) for row in rows]
    assert [e.get("access") for e in entries if e["institution"] == "ISSSTE"] == ["filtered"]
    events = client.get("/fhir/AuditEvent", params={"_count": "100"}, headers=issste).json()
    described = [e["resource"].get("outcomeDesc", "") for e in events.get("entry", [])]
    assert any("withholds" in text for text in described), described
