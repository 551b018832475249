"""Writes under the access policy, with auth ON (both backends): each way an attacker holding one
institution's token changed, probed or revealed another institution's record, closed.

The policy (DESIGN.md "Access"): only the institution that recorded a resource changes it (no write grant
exists), a conditional match considers only what the caller may read, a Consent grants only when the
patient record's custodian wrote it, and identity operations ($link, $unlink, links served with a Patient)
follow the same rule as reads.
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

from ehr_core.audit import AuditRecord, BreakGlassAccess
from ehr_core.demo.people import make_curp
from ehr_core.identity.identifiers import CURP_SYSTEM
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.auth import mint_development_token
from fhir_api.services import Services
from projections.identity import IdentityIndex
from tests.support.access import consent

FHIR = {"Content-Type": "application/fhir+json"}
INSTITUTION = "urn:ehr-core:institution"
GLASS = {"X-EHR-Break-Glass": "paciente inconsciente en urgencias"}


@pytest.fixture
def secured(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Services, Settings]]:
    configured = settings.model_copy(update={"auth": "required", "data_dir": tmp_path / "ehr-data"})
    services = Services.open(configured)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client, services, configured
    finally:
        services.close()


def _auth(
    settings: Settings, institution: str, user: str, scope: str = "user/*.cruds", **claims: str
) -> dict[str, str]:
    body: dict[str, Any] = {"institution": institution, "user": user, "role": "physician", "scope": scope, **claims}
    return {"Authorization": f"Bearer {mint_development_token(settings, body)}"}


def _curp_patient(family: str, second: str, given: str, born: date, seed: int) -> dict[str, Any]:
    curp = make_curp([given], family, second, "M", born, "JC", random.Random(seed))
    return {
        "resourceType": "Patient",
        "identifier": [{"system": CURP_SYSTEM, "value": curp}],
        "name": [{"family": f"{family} {second}", "given": [given]}],
        "gender": "female",
        "birthDate": born.isoformat(),
    }


def _post(client: TestClient, headers: dict[str, str], resource: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR | headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _observation(patient: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _consent(patient: str, reader: str) -> dict[str, Any]:
    return consent(patient, reader)


def test_patch_of_another_institutions_resource_discloses_nothing(
    secured: tuple[TestClient, Services, Settings],
) -> None:
    """An empty patch with ``return=representation`` would read the resource; a JSON Patch ``test`` would
    answer yes or no about its values. Both are refused before the patch runs, with the same answer."""
    client, _, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    pid = _post(client, imss, {"resourceType": "Patient", "name": [{"family": "Robles"}]})["id"]
    oid = _post(client, imss, _observation(pid, "VIH carga viral"))["id"]
    patch = {"Content-Type": "application/json-patch+json", "Prefer": "return=representation"}
    answers = []
    for body in ([], [{"op": "test", "path": "/code/text", "value": "VIH carga viral"}],
                 [{"op": "test", "path": "/code/text", "value": "otra cosa"}]):  # fmt: skip
        response = client.patch(f"/fhir/Observation/{oid}", content=orjson.dumps(body), headers=patch | issste)
        assert response.status_code == 403, response.text
        assert "VIH" not in response.text and "Robles" not in response.text
        answers.append(response.json())
    assert answers[1] == answers[2]  # no oracle: a true and a false test answer alike
    assert client.get(f"/fhir/Observation/{oid}", headers=imss).json()["meta"]["versionId"] == "1"


def test_id_chosen_by_another_institution_stays_theirs(secured: tuple[TestClient, Services, Settings]) -> None:
    """Ids are global: a client id already taken by another institution's create-on-update is refused with
    403 naming the recorder, never overwritten (the first recorder keeps it)."""
    client, _, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    squatted = _observation("x", "ISSSTE primero") | {"id": "lab-2026-1"}
    assert client.put("/fhir/Observation/lab-2026-1", json=squatted, headers=FHIR | issste).status_code == 201
    mine = _observation("y", "IMSS después") | {"id": "lab-2026-1"}
    refused = client.put("/fhir/Observation/lab-2026-1", json=mine, headers=FHIR | imss)
    assert refused.status_code == 403 and "ISSSTE" in refused.text
    stored = client.get("/fhir/Observation/lab-2026-1", headers=issste).json()
    assert stored["code"]["text"] == "ISSSTE primero" and stored["meta"]["versionId"] == "1"


def test_conditional_writes_by_curp_never_reach_a_hidden_patient(
    secured: tuple[TestClient, Services, Settings],
) -> None:
    """A conditional create, update or delete, and a conditional reference in a transaction, by another
    institution's patient's CURP: the hidden record is not a match. The create records ISSSTE's own Patient
    (the master patient index links the two records of one person), the update likewise, the delete deletes
    nothing, the reference finds nothing; IMSS's record is unchanged and never shown."""
    client, services, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    patient = _curp_patient("Mendoza", "Ríos", "Lucía", date(1970, 3, 21), 7)
    curp = patient["identifier"][0]["value"]
    at_imss = _post(client, imss, patient)
    condition = f"identifier={CURP_SYSTEM}|{curp}"

    created = client.post("/fhir/Patient", json=patient, headers=FHIR | issste | {"If-None-Exist": condition})
    assert created.status_code == 201, created.text
    assert created.json()["id"] != at_imss["id"]
    updated = client.put(f"/fhir/Patient?{condition}", json=patient, headers=FHIR | issste)
    assert updated.status_code in (200, 201) and at_imss["id"] not in updated.text  # ISSSTE's own record
    deleted = client.delete(f"/fhir/Patient?{condition}", headers=issste)
    assert deleted.status_code in (200, 204)
    reference = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": _observation("x", "glucosa") | {"subject": {"reference": f"Patient?{condition}"}},
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    # ISSSTE's own record was deleted just above: now only IMSS's matches, and it is hidden from ISSSTE, so
    # the reference matches nothing: 422 naming the element (ehr_core.references), as for an unknown CURP.
    resolved = client.post("/fhir", json=reference, headers=FHIR | issste)
    assert resolved.status_code == 422, resolved.text
    assert resolved.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource (Observation.subject)"]
    assert at_imss["id"] not in resolved.text
    assert client.get(f"/fhir/Patient/{at_imss['id']}", headers=imss).json()["meta"]["versionId"] == "1"
    services.identity_current()


def test_consent_by_another_institution_grants_nothing(secured: tuple[TestClient, Services, Settings]) -> None:
    """ISSSTE writing a Consent for IMSS's patient naming ISSSTE is stored (a request) but grants nothing;
    the same Consent written by IMSS, the custodian, does."""
    client, _, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    pid = _post(client, imss, {"resourceType": "Patient", "name": [{"family": "Robles"}]})["id"]
    oid = _post(client, imss, _observation(pid, "VIH carga viral"))["id"]
    _post(client, issste, _consent(pid, "ISSSTE"))
    assert client.get(f"/fhir/Observation/{oid}", headers=issste).status_code == 403
    assert client.get(f"/fhir/Patient/{pid}/$everything", headers=issste).status_code == 403
    _post(client, imss, _consent(pid, "ISSSTE"))
    assert client.get(f"/fhir/Observation/{oid}", headers=issste).status_code == 200
    assert "VIH" in client.get(f"/fhir/Patient/{pid}/$everything", headers=issste).text


def test_link_and_unlink_of_another_institutions_record_are_refused(
    secured: tuple[TestClient, Services, Settings],
) -> None:
    """A data steward confirms or undoes links of their own institution's records, and links only to a person
    whose records they may read; the refusal carries none of the person's demographics."""
    client, services, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "steward.issste")
    at_imss = _post(client, imss, _curp_patient("Mendoza", "Ríos", "Lucía", date(1970, 3, 21), 7))
    at_issste = _post(client, issste, _curp_patient("Zavala", "Nuñez", "Pedro", date(1980, 5, 2), 9))
    services.identity_current()
    curp = at_imss["identifier"][0]["value"]
    other = {"resourceType": "Parameters", "parameter": [{"name": "other", "valueReference": {"reference":
             f"Patient/{at_imss['id']}"}}]}  # fmt: skip
    linked = client.post(f"/fhir/Patient/{at_issste['id']}/$link", json=other, headers=FHIR | issste)
    assert linked.status_code == 403, linked.text
    assert curp not in linked.text and "Mendoza" not in linked.text
    unlinked = client.post(f"/fhir/Patient/{at_imss['id']}/$unlink", json={}, headers=FHIR | issste)
    assert unlinked.status_code == 403 and curp not in unlinked.text
    with services.views.read() as tx:
        assert IdentityIndex.linked_records(tx, at_issste["id"]) == [at_issste["id"]]


def test_patient_read_links_only_records_the_reader_may_read(
    secured: tuple[TestClient, Services, Settings],
) -> None:
    """The served ``link`` of ISSSTE's own record names IMSS's record of the same person only once ISSSTE
    may read it (as ``$ihe-pix`` answers)."""
    client, services, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    person = _curp_patient("Mendoza", "Ríos", "Lucía", date(1970, 3, 21), 7)
    at_imss, at_issste = _post(client, imss, person)["id"], _post(client, issste, person)["id"]
    services.identity_current()
    with services.views.read() as tx:
        assert set(IdentityIndex.linked_records(tx, at_issste)) == {at_issste, at_imss}
    hidden = client.get(f"/fhir/Patient/{at_issste}", headers=issste)
    assert hidden.status_code == 200 and at_imss not in hidden.text
    _post(client, imss, _consent(at_imss, "ISSSTE"))
    shown = client.get(f"/fhir/Patient/{at_issste}", headers=issste)
    assert {"other": {"reference": f"Patient/{at_imss}"}, "type": "seealso"} in shown.json()["link"]


def test_foreign_note_leaves_the_record_holder_its_everything(
    secured: tuple[TestClient, Services, Settings],
) -> None:
    """ISSSTE writing into an IMSS patient's compartment does not turn IMSS's ``$everything`` and
    ``$summary`` into 403: IMSS gets its own entries, without ISSSTE's note."""
    client, _, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    pid = _post(client, imss, {"resourceType": "Patient", "name": [{"family": "Robles"}]})["id"]
    own = _post(client, imss, _observation(pid, "glucosa 96"))["id"]
    _post(client, issste, _observation(pid, "nota ISSSTE"))
    everything = client.get(f"/fhir/Patient/{pid}/$everything", headers=imss)
    assert everything.status_code == 200, everything.text
    ids = {e["resource"]["id"] for e in everything.json()["entry"]}
    assert ids == {pid, own} and "nota ISSSTE" not in everything.text
    assert client.get(f"/fhir/Patient/{pid}/$summary", headers=imss).status_code == 200


def test_break_glass_count_is_logged_and_audited(secured: tuple[TestClient, Services, Settings]) -> None:
    """A total is a disclosure: ``_summary=count`` past the institution rule under break-the-glass is listed
    for review and flagged like a page of such resources; within the rule it is not."""
    client, services, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    pid = _post(client, imss, {"resourceType": "Patient", "name": [{"family": "Robles"}]})["id"]
    _post(client, imss, _observation(pid, "glucosa"))

    def logged() -> int:
        with services.views.read() as tx:
            row = tx.execute("SELECT COUNT(*) FROM break_glass_log").fetchone()
        return int(row[0]) if row else 0

    for params in ({"_summary": "count"}, {"_count": "0"}):
        before = logged()
        counted = client.get("/fhir/Observation", params=params, headers=issste | GLASS)
        assert counted.status_code == 200 and counted.json()["total"] == 1
        assert counted.headers.get("x-ehr-break-glass") == "granted"
        assert logged() == before + 1
    own = client.get("/fhir/Observation", params={"_summary": "count"}, headers=imss | GLASS)
    assert own.json()["total"] == 1 and "x-ehr-break-glass" not in own.headers


def test_export_job_answers_only_its_requester(secured: tuple[TestClient, Services, Settings]) -> None:
    """Bulk Data IG: the status and files of a job belong to the client that kicked it off. Another user of
    the same institution, and a patient app of it, get 404 as for a job that does not exist."""
    client, _, settings = secured
    starter = _auth(settings, "IMSS", "dr.imss", "system/*.rs")
    pid = _post(client, _auth(settings, "IMSS", "dr.imss"), {"resourceType": "Patient", "name": [{"family": "R"}]})[
        "id"
    ]
    kick = client.get("/fhir/$export", headers=starter | {"Prefer": "respond-async"})
    assert kick.status_code == 202, kick.text
    status_url = "/fhir" + kick.headers["content-location"].split("/fhir", 1)[1]
    deadline = time.monotonic() + 60
    while (status := client.get(status_url, headers=starter)).status_code == 202:
        assert time.monotonic() < deadline, "the export did not finish"
        time.sleep(0.05)
    assert status.status_code == 200
    colleague = _auth(settings, "IMSS", "dr.otro", "system/*.rs")
    patient_app = _auth(settings, "IMSS", "app", "patient/*.rs", patient=pid)
    for headers in (colleague, patient_app):
        assert client.get(status_url, headers=headers).status_code in (403, 404)
        for output in status.json()["output"]:
            file_url = "/fhir" + output["url"].split("/fhir", 1)[1]
            assert client.get(file_url, headers=headers).status_code in (403, 404)


def test_batch_read_with_patient_scope_stays_in_the_compartment(
    secured: tuple[TestClient, Services, Settings],
) -> None:
    """A batch GET entry is a read: a patient-context token reaches only its patient's compartment there too."""
    client, _, settings = secured
    imss = _auth(settings, "IMSS", "dr.imss")
    mine, theirs = (_post(client, imss, {"resourceType": "Patient", "name": [{"family": f}]})["id"] for f in "AB")
    their_note = _post(client, imss, _observation(theirs, "VIH carga viral"))["id"]
    my_note = _post(client, imss, _observation(mine, "glucosa"))["id"]
    app = _auth(settings, "IMSS", "app", "patient/*.rs", patient=mine)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/{their_note}"}},
            {"request": {"method": "GET", "url": f"Observation/{my_note}"}},
        ],
    }
    answer = client.post("/fhir", json=batch, headers=FHIR | app)
    assert answer.status_code == 200, answer.text
    first, second = (entry["response"]["status"] for entry in answer.json()["entry"])
    assert first.startswith("403") and second.startswith("200")
    assert "VIH" not in answer.text


def test_break_glass_reason_is_in_the_signed_audit_log(secured: tuple[TestClient, Services, Settings]) -> None:
    """The reason given for breaking the glass travels with the audit entry (the log the audit ledger signs)
    and with its AuditEvent, not only in the review list a database user could edit."""
    client, services, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    pid = _post(client, imss, {"resourceType": "Patient", "name": [{"family": "Robles"}]})["id"]
    oid = _post(client, imss, _observation(pid, "glucosa"))["id"]
    read = client.get(f"/fhir/Observation/{oid}", headers=issste | GLASS)
    assert read.status_code == 200 and read.headers["x-ehr-break-glass"] == "granted"
    compliance = services.compliance
    compliance.audit_writer.flush()
    notifications = compliance.audit_log.recorder.select_notifications(start=1, limit=100_000)
    events = [compliance.audit_log.mapper.to_domain_event(n) for n in notifications]
    entries = [e.entry for e in events if isinstance(e, AuditRecord.Recorded)]
    glass = [e for e in entries if e.get("purpose") == "BTG"]
    assert [(e["path"], e["reason"]) for e in glass] == [(f"/fhir/Observation/{oid}", GLASS["X-EHR-Break-Glass"])]
    assert all("reason" not in e for e in entries if e.get("purpose") != "BTG")
    # The access itself is an event of the same log, the one the review list projects.
    granted = [(e.target, e.reason) for e in events if isinstance(e, BreakGlassAccess.Granted)]
    assert granted == [(f"Observation/{oid}", GLASS["X-EHR-Break-Glass"])]
    compliance.audit_views_current()
    events = client.get("/fhir/AuditEvent", params={"_count": "100"}, headers=issste)
    texts = [p.get("text") for e in events.json().get("entry", []) for p in e["resource"].get("purposeOfEvent", [])]
    assert GLASS["X-EHR-Break-Glass"] in texts, events.text[:500]


def test_patient_app_sees_only_its_own_patients_accesses(secured: tuple[TestClient, Services, Settings]) -> None:
    """A patient-facing app's AuditEvents are the accesses to its own patient's record alone: no entry that
    names another patient (a search listing several), and no staff search string."""
    client, services, settings = secured
    imss = _auth(settings, "IMSS", "dr.imss")
    mine = _post(client, imss, {"resourceType": "Patient", "name": [{"family": "Robles"}], "birthDate": "1970-01-01"})
    other = _post(client, imss, {"resourceType": "Patient", "name": [{"family": "Robledo"}], "birthDate": "1980-01-01"})
    assert client.get(f"/fhir/Patient/{mine['id']}", headers=imss).status_code == 200
    assert client.get(f"/fhir/Patient/{other['id']}", headers=imss).status_code == 200
    listed = client.get("/fhir/Patient", params={"name": "robl"}, headers=imss)
    assert {e["resource"]["id"] for e in listed.json()["entry"]} == {mine["id"], other["id"]}
    services.compliance.audit_writer.flush()
    services.compliance.audit_views_current()
    app = _auth(settings, "IMSS", "app", "patient/*.rs", patient=mine["id"])
    events = client.get("/fhir/AuditEvent", params={"patient": mine["id"], "_count": "100"}, headers=app)
    assert events.status_code == 200, events.text
    found = [e["resource"] for e in events.json()["entry"]]
    assert found, "the patient sees the accesses to their record"
    assert other["id"] not in events.text and "robl" not in events.text
    assert all("query" not in entity for event in found for entity in event.get("entity", []))
    # The audit ledger's proof of an entry carries the entry itself: the same rule.
    with services.views.read() as tx:
        row = tx.execute(
            "SELECT e.audit_nid FROM audit_entries e WHERE e.audit_nid NOT IN "
            "(SELECT audit_nid FROM audit_entry_refs WHERE value = ?) ORDER BY e.audit_nid DESC LIMIT 1",
            (f"Patient/{mine['id']}",),
        ).fetchone()
    assert row is not None
    hidden = client.get("/fhir/$ledger-proof", params={"log": "audit", "event": row[0]}, headers=app)
    assert hidden.status_code == 403, hidden.text


def test_patient_app_grants_its_own_consent_and_writes_nothing_else(
    secured: tuple[TestClient, Services, Settings],
) -> None:
    """The patient, through a patient-facing app, may grant access to their own record like the custodian
    does; the same app records no other resource and no Consent for another patient."""
    client, _, settings = secured
    imss, issste = _auth(settings, "IMSS", "dr.imss"), _auth(settings, "ISSSTE", "dr.issste")
    mine = _post(client, imss, {"resourceType": "Patient", "name": [{"family": "Robles"}]})["id"]
    theirs = _post(client, imss, {"resourceType": "Patient", "name": [{"family": "Soto"}]})["id"]
    note = _post(client, imss, _observation(mine, "glucosa"))["id"]
    app = _auth(settings, "IMSS", "portal", "patient/Consent.cru patient/*.rs", patient=mine)
    assert client.get(f"/fhir/Observation/{note}", headers=issste).status_code == 403
    for refused in (_consent(theirs, "ISSSTE"), _observation(mine, "auto-reporte")):
        answer = client.post(f"/fhir/{refused['resourceType']}", json=refused, headers=FHIR | app)
        assert answer.status_code == 403, answer.text
    granted = client.post("/fhir/Consent", json=_consent(mine, "ISSSTE"), headers=FHIR | app)
    assert granted.status_code == 201, granted.text
    assert client.get(f"/fhir/Observation/{note}", headers=issste).status_code == 200
    # Withdrawn by the patient (an update of its status, never a delete): the grant ends.
    withdrawn = granted.json() | {"status": "inactive"}
    assert client.delete(f"/fhir/Consent/{withdrawn['id']}", headers=app).status_code == 403
    updated = client.put(f"/fhir/Consent/{withdrawn['id']}", json=withdrawn, headers=FHIR | app)
    assert updated.status_code == 200, updated.text
    assert client.get(f"/fhir/Observation/{note}", headers=issste).status_code == 403
