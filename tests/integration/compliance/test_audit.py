"""The audit log, AuditEvent, Provenance, ``_at`` reads and ``ehr audit replay``, on both backends."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.auth import mint_development_token
from fhir_api.services import Services
from projections.audit import AuditQuery, search_audit
from tests.integration.compliance.conftest import Cli

DOCTOR = {
    "X-EHR-User": "dra.lopez",
    "X-EHR-Role": "physician",
    "X-EHR-Institution": "IMSS",
    "X-EHR-Unit": "DFIMS000123",
    "X-EHR-Purpose": "TREAT",
}
# Named, with a birth date: what the identity index expects of a Patient.
PATIENT = {"resourceType": "Patient", "name": [{"family": "Pérez", "given": ["Ana"]}], "birthDate": "1980-02-03"}
NURSE = {**DOCTOR, "X-EHR-User": "enf.ruiz", "X-EHR-Role": "nurse", "X-EHR-Institution": "ISSSTE"}
# Only the institution that recorded a resource changes it: a colleague at IMSS amends the doctor's record.
COLLEAGUE = {**DOCTOR, "X-EHR-User": "enf.mora", "X-EHR-Role": "nurse"}


def _entries(services: Services) -> list[Any]:
    assert services.compliance is not None
    services.compliance.audit_views_current()
    with services.views.read() as tx:
        return [a.entry for a in search_audit(tx, AuditQuery({}, {}, []), 100_000)]


def _observation(patient: str, value: str = "120") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": float(value), "unit": "mm[Hg]"},
    }


def test_every_interaction_leaves_exactly_one_audit_entry(client: TestClient, services: Services) -> None:
    sent: dict[str, int] = {}
    counter = iter(range(1000))

    def call(method: str, url: str, **kwargs: Any) -> Any:
        request_id = f"req-{next(counter)}"
        headers = {**DOCTOR, "X-Request-ID": request_id, **kwargs.pop("headers", {})}
        response = client.request(method, url, headers=headers, **kwargs)
        sent[request_id] = response.status_code
        return response

    patient = call("POST", "/fhir/Patient", json={"resourceType": "Patient", "birthDate": "1980-02-03"}).json()["id"]
    obs = call("POST", "/fhir/Observation", json=_observation(patient)).json()
    call("GET", f"/fhir/Observation/{obs['id']}")
    call("GET", f"/fhir/Observation/{obs['id']}/_history/1")
    call("PUT", f"/fhir/Observation/{obs['id']}", json={**obs, "status": "amended"})
    call(
        "PATCH",
        f"/fhir/Observation/{obs['id']}",
        json=[{"op": "replace", "path": "/status", "value": "corrected"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    call("GET", f"/fhir/Observation/{obs['id']}/_history")
    call("GET", "/fhir/Observation/_history")
    call("GET", "/fhir/_history")
    call("GET", f"/fhir/Observation?subject=Patient/{patient}")
    call("GET", "/fhir/metadata")
    call("POST", "/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": []})
    call("DELETE", f"/fhir/Observation/{obs['id']}")
    call("GET", f"/fhir/Observation/{obs['id']}")  # 410
    call("GET", "/fhir/Observation/does-not-exist")  # 404
    call("GET", "/fhir/NoSuchType/1")  # 404
    stale = {"If-Match": 'W/"9"'}
    call("PUT", f"/fhir/Patient/{patient}", json={"resourceType": "Patient", "id": patient}, headers=stale)  # 412
    call("POST", "/fhir/Patient", content=b"Patient", headers={"Content-Type": "text/plain"})  # 415
    call("POST", "/fhir/AuditEvent", json={"resourceType": "AuditEvent"})  # 400: invalid (no type, agent, source)
    call("GET", f"/fhir/AuditEvent?patient={patient}")
    call("GET", f"/fhir/Provenance?target=Patient/{patient}")
    call("GET", "/fhir/$ledger-key")
    statuses = Counter(sent.values())
    assert {400, 404, 410, 412, 415} <= set(statuses), statuses

    entries = _entries(services)
    per_request = Counter(e.request_id for e in entries)
    assert {rid: per_request[rid] for rid in sent} == {rid: 1 for rid in sent}
    assert len(entries) == len(sent)
    by_id = {e.request_id: e for e in entries}
    for rid, status in sent.items():
        entry = by_id[rid]
        assert entry.status == status
        assert (entry.user, entry.role, entry.institution, entry.unit, entry.purpose) == (
            "dra.lopez",
            "physician",
            "IMSS",
            "DFIMS000123",
            "TREAT",
        )
        assert entry.address == "testclient"
        assert entry.outcome == ("0" if status < 400 else "4")
    [refused] = [e for e in entries if e.status == 412]
    assert refused.interaction == "update" and refused.entities == [f"Patient/{patient}"]


def test_audit_events_are_fhir_and_searchable(client: TestClient, services: Services) -> None:
    patient = client.post("/fhir/Patient", json=PATIENT, headers=DOCTOR).json()["id"]
    obs = client.post("/fhir/Observation", json=_observation(patient), headers=DOCTOR).json()["id"]
    client.get(f"/fhir/Observation/{obs}", headers=NURSE)
    client.get("/fhir/Observation/missing", headers=NURSE)

    def search(query: str) -> list[dict[str, Any]]:
        response = client.get(f"/fhir/AuditEvent?{query}")
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        return [e["resource"] for e in bundle.get("entry", [])]

    by_patient = search(f"patient={patient}")
    assert [e["action"] for e in by_patient] == ["R", "C", "C"]  # newest first
    read = by_patient[0]
    assert read["resourceType"] == "AuditEvent" and read["subtype"][0]["code"] == "read"
    assert read["meta"]["profile"] == ["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Read"]
    client_agent = read["agent"][0]
    assert client_agent["who"]["identifier"] == {"system": "urn:ehr-core:user:ISSSTE", "value": "enf.ruiz"}
    assert client_agent["network"]["address"] == "testclient" and client_agent["requestor"] is True
    assert client_agent["location"]["identifier"]["value"] == "DFIMS000123"
    assert read["agent"][1]["who"]["identifier"]["value"] == "ISSSTE"
    assert {"reference": f"Observation/{obs}/_history/1"} in [e.get("what") for e in read["entity"]]
    assert len(search(f"entity=Observation/{obs}")) == 2
    assert len(search(f"entity=Observation/{obs}/_history/1&action=R")) == 1
    assert len(search("agent=enf.ruiz")) >= 2
    assert len(search("agent=urn:ehr-core:institution|ISSSTE&outcome=4")) == 1
    assert len(search("subtype=read&outcome=0")) == 1
    recorded = read["recorded"]
    assert search(f"date=ge{recorded}&patient={patient}")[0]["id"] == read["id"]
    assert search(f"date=lt{recorded}&patient={patient}&action=R") == []
    assert client.get(f"/fhir/AuditEvent/{read['id']}").json() == read
    assert client.get("/fhir/AuditEvent?color=red").status_code == 400
    paged = client.get("/fhir/AuditEvent?_count=2").json()
    assert len(paged["entry"]) == 2 and any(link["relation"] == "next" for link in paged["link"])


def test_every_write_has_a_provenance(client: TestClient) -> None:
    patient = client.post("/fhir/Patient", json=PATIENT, headers=DOCTOR).json()["id"]
    obs = client.post("/fhir/Observation", json=_observation(patient), headers=DOCTOR).json()
    client.put(f"/fhir/Observation/{obs['id']}", json={**obs, "status": "amended"}, headers=COLLEAGUE)
    client.delete(f"/fhir/Observation/{obs['id']}", headers=COLLEAGUE)
    bundle = client.get(f"/fhir/Provenance?target=Observation/{obs['id']}").json()
    found = [e["resource"] for e in bundle["entry"]]
    assert [p["activity"]["coding"][0]["code"] for p in found] == ["DELETE", "UPDATE", "CREATE"]
    create = found[-1]
    assert create["target"] == [{"reference": f"Observation/{obs['id']}/_history/1"}]
    assert create["recorded"] == obs["meta"]["lastUpdated"]
    agent = create["agent"][0]
    assert agent["who"]["identifier"] == {"system": "urn:ehr-core:user:IMSS", "value": "dra.lopez"}
    assert agent["onBehalfOf"]["identifier"]["value"] == "IMSS"
    assert create["location"]["identifier"]["value"] == "DFIMS000123"
    assert found[0]["agent"][0]["who"]["identifier"] == {"system": "urn:ehr-core:user:IMSS", "value": "enf.mora"}
    one = client.get(f"/fhir/Provenance?target=Observation/{obs['id']}/_history/2").json()["entry"]
    assert len(one) == 1 and one[0]["resource"]["activity"]["coding"][0]["code"] == "UPDATE"
    assert len(client.get(f"/fhir/Provenance?patient={patient}").json()["entry"]) == 4
    read = client.get(f"/fhir/Provenance/{create['id']}")
    assert read.status_code == 200 and read.json() == create
    # The server's Provenance is immutable; a client's own Provenance may not take its id.
    assert client.put(f"/fhir/Provenance/{create['id']}", json=create).status_code == 409


def test_at_returns_the_version_the_reader_received(client: TestClient, services: Services) -> None:
    patient = client.post("/fhir/Patient", json=PATIENT, headers=DOCTOR).json()["id"]
    obs = client.post("/fhir/Observation", json=_observation(patient, "120"), headers=DOCTOR).json()
    seen = client.get(f"/fhir/Observation/{obs['id']}", headers=NURSE)
    assert seen.status_code == 200
    corrected = client.put(
        f"/fhir/Observation/{obs['id']}",
        json={**obs, "valueQuantity": {"value": 130.0, "unit": "mm[Hg]"}},
        headers=DOCTOR,  # corrected by the institution that recorded it
    )
    assert corrected.json()["meta"]["versionId"] == "2"
    audit = next(e for e in _entries(services) if e.interaction == "read" and e.user == "enf.ruiz" and e.status == 200)
    [entity] = [e for e in audit.entities if e.startswith("Observation/")]
    then = client.get(f"/fhir/Observation/{obs['id']}", params={"_at": audit.recorded})
    assert then.status_code == 200
    assert then.content == seen.content
    assert (
        entity
        == f"Observation/{obs['id']}/_history/{then.json()['meta']['versionId']}"
        == (f"Observation/{obs['id']}/_history/1")
    )
    now = client.get(f"/fhir/Observation/{obs['id']}", params={"_at": corrected.json()["meta"]["lastUpdated"]})
    assert now.json()["meta"]["versionId"] == "2"
    before = client.get(f"/fhir/Observation/{obs['id']}", params={"_at": "2001-01-01T00:00:00Z"})
    assert before.status_code == 404
    client.delete(f"/fhir/Observation/{obs['id']}")
    assert client.get(f"/fhir/Observation/{obs['id']}", params={"_at": "2999-01-01T00:00:00+00:00"}).status_code == 410
    assert client.get(f"/fhir/Observation/{obs['id']}", params={"_at": "yesterday"}).status_code == 400


def test_audit_replay_of_one_patient(
    client: TestClient, services: Services, ehr: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    patient = client.post("/fhir/Patient", json=PATIENT, headers=DOCTOR).json()["id"]
    other = client.post("/fhir/Patient", json=PATIENT, headers=DOCTOR).json()["id"]
    obs = client.post("/fhir/Observation", json=_observation(patient), headers=DOCTOR).json()
    client.get(f"/fhir/Observation/{obs['id']}", headers=NURSE)
    client.put(f"/fhir/Observation/{obs['id']}", json={**obs, "status": "amended"}, headers=DOCTOR)
    client.get(f"/fhir/Observation/{obs['id']}", headers=NURSE)
    client.get(f"/fhir/Patient/{other}", headers=NURSE)
    client.put(
        f"/fhir/Observation/{obs['id']}", json={**obs, "status": "cancelled"}, headers={**NURSE, "If-Match": 'W/"1"'}
    )
    # (ISSSTE's update of IMSS's record is refused: 403, before its stale If-Match could answer 412.)
    # An answer does not wait for its audit entry's commit (it follows within milliseconds); `ehr audit`
    # reads the committed log from outside the server, so the test waits for the server's writer first.
    assert services.compliance is not None
    services.compliance.audit_writer.flush()

    assert ehr("audit", "replay", "--patient", patient, "--format", "ndjson") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    story = [(line["kind"], line["action"], line["resources"], line["user"]) for line in lines]
    oid = obs["id"]
    assert story == [
        ("write", "create", f"Patient/{patient}/_history/1", "dra.lopez"),
        ("write", "create", f"Observation/{oid}/_history/1", "dra.lopez"),
        ("access", "read", f"Observation/{oid}/_history/1", "enf.ruiz"),
        ("write", "update", f"Observation/{oid}/_history/2", "dra.lopez"),
        ("access", "read", f"Observation/{oid}/_history/2", "enf.ruiz"),
        ("refused", "update", f"Observation/{oid}", "enf.ruiz"),
    ]
    assert [line["recorded"] for line in lines] == sorted(line["recorded"] for line in lines)
    assert lines[2]["institution"] == "ISSSTE" and lines[2]["unit"] == "DFIMS000123" and lines[-1]["status"] == "403"

    assert ehr("audit", "replay", "--patient", patient, "--format", "csv", "--from", lines[3]["recorded"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["kind"] for r in rows] == ["write", "access", "refused"]
    assert ehr("audit", "replay", "--patient", patient, "--patient", other, "--to", lines[2]["recorded"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == 4 and "enf.ruiz (nurse) @ ISSSTE" in text[-1] and "read" in text[-1]


def test_refusals_by_the_auth_layer_are_audited_once(settings: Settings, tmp_path: Path) -> None:
    """With bearer tokens required: 401 and 403 each leave exactly one entry, with who was refused."""
    secured = settings.model_copy(
        update={"auth": "required", "data_dir": tmp_path / "ehr-data", "auth_issuers_dir": tmp_path / "issuers"}
    )
    (tmp_path / "issuers").mkdir()
    services = Services.open(secured)
    try:
        with TestClient(create_app(services=services)) as client:
            claims = {"institution": "IMSS", "unit": "DFIMS000011", "user": "dr.read", "role": "physician"}
            reader = {"Authorization": f"Bearer {mint_development_token(secured, claims | {'scope': 'user/*.r'})}"}
            assert client.get("/fhir/Patient", headers={"X-Request-ID": "no-token"}).status_code == 401
            refused = client.post("/fhir/Patient", json=PATIENT, headers=reader | {"X-Request-ID": "read-only"})
            assert refused.status_code == 403, refused.text
            assert client.get("/fhir/metadata", headers=reader | {"X-Request-ID": "allowed"}).status_code == 200
        entries = _entries(services)
    finally:
        services.close()
    by_id = Counter(e.request_id for e in entries)
    assert by_id["no-token"] == 1 and by_id["read-only"] == 1 and by_id["allowed"] == 1
    denied = next(e for e in entries if e.status == 403)
    assert (denied.user, denied.institution, denied.interaction, denied.outcome) == ("dr.read", "IMSS", "create", "4")
    assert next(e for e in entries if e.status == 401).user == "anonymous"
