"""What an audited read costs beyond its audit entry's commit, by count, on both backends.

Every read leaves an audit entry (fhir_api/audit_middleware.py) and the sealer signs the audit log's
entries every few seconds (projections/ledger.py): both run in the API process, beside the requests.
These count the work they repeat: the decode of an answer whose path and ETag already name what it holds,
and the sealer's reading of every block signed so far to count the events under them.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_api import audit_middleware
from fhir_api.disclosure import from_body
from fhir_api.services import Services
from projections import db
from projections.audit import AuditQuery, search_audit
from projections.ledger import LedgerSealer

HEADERS = {"X-EHR-User": "dra.lopez", "X-EHR-Institution": "IMSS", "X-EHR-Purpose": "TREAT"}
PATIENT = {"resourceType": "Patient", "name": [{"family": "Pérez", "given": ["Ana"]}], "birthDate": "1980-02-03"}


def _entry_of(services: Services, request_id: str) -> dict[str, Any]:
    assert services.compliance is not None
    services.compliance.audit_views_current()
    with services.views.read() as tx:
        found = [a.entry for a in search_audit(tx, AuditQuery({}, {}, []), 100_000)]
    (entry,) = [e for e in found if e.request_id == request_id]
    return entry.as_dict()


def _counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The answers the audit middleware decodes again to learn what they disclosed, from now on."""
    decoded: list[bytes] = []

    def counted(body: bytes, entities: list[str], patients: list[str]) -> None:
        decoded.append(body)
        from_body(body, entities, patients)

    monkeypatch.setattr(audit_middleware, "from_body", counted)
    return decoded


def test_a_patient_read_is_audited_without_decoding_its_answer(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = client.post("/fhir/Patient", json=PATIENT, headers=HEADERS).json()["id"]
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }
    observed = client.post("/fhir/Observation", json=observation, headers=HEADERS).json()["id"]
    decoded = _counting_decodes(monkeypatch)
    read = client.get(f"/fhir/Patient/{patient}", headers={**HEADERS, "X-Request-ID": "read-patient"})
    vread = client.get(f"/fhir/Patient/{patient}/_history/1", headers={**HEADERS, "X-Request-ID": "vread-patient"})
    assert (read.status_code, vread.status_code) == (200, 200)
    # The path names the Patient, the ETag its version: the body, decoded again, would say nothing more.
    assert decoded == []
    for request_id in ("read-patient", "vread-patient"):
        entry = _entry_of(services, request_id)
        assert entry["entities"] == [f"Patient/{patient}/_history/1"]
        assert entry["patients"] == [patient]
    # Another type's read names its patient only in its body (the subject): that one is still read.
    other = client.get(f"/fhir/Observation/{observed}", headers={**HEADERS, "X-Request-ID": "read-observation"})
    assert other.status_code == 200 and len(decoded) == 1
    assert _entry_of(services, "read-observation")["patients"] == [patient]


def test_sealing_a_block_does_not_read_every_block_sealed_before(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert services.compliance is not None
    for thread in services.compliance.threads:
        if isinstance(thread, LedgerSealer):
            thread.stop()  # this test seals, and counts what each seal sends
    ledger = services.compliance.audit_ledger
    statements: list[str] = []
    originals = {kind: kind.execute for kind in (db._SQLiteTx, db._PostgresTx)}

    def counting(kind: Any) -> Any:
        def execute(self: Any, sql: str, params: Any = ()) -> Any:
            statements.append(sql)
            return originals[kind](self, sql, params)

        return execute

    for kind in originals:
        monkeypatch.setattr(kind, "execute", counting(kind))
    sums = []
    for _ in range(3):  # a partly filled block after each few reads, as the sealer does every 2 s
        for _ in range(3):
            assert client.get("/fhir/metadata", headers=HEADERS).status_code == 200
        services.compliance.audit_writer.flush()
        statements.clear()
        assert ledger.seal(partial=True) == 1
        sums.append([s for s in statements if "SUM(" in s.upper()])
    # The running total comes from the last signed head, which carries it: no scan of every block.
    assert sums == [[], [], []]
    head = ledger.latest_head()
    with services.views.read() as tx:
        row = tx.execute(f"SELECT COALESCE(SUM(count), 0) FROM {ledger.blocks}").fetchone()
    assert head is not None and head[0].total == int(row[0])


def test_a_searched_page_is_indexed_once_per_reference(client: TestClient, services: Services) -> None:
    """A page of Patients names each one as an entity and as a patient of the entry: the look-up rows of
    the AuditEvent views hold each (parameter, value) once, and AuditEvent search finds the entry by either."""
    ids = [client.post("/fhir/Patient", json=PATIENT, headers=HEADERS).json()["id"] for _ in range(3)]
    page = {**HEADERS, "X-Request-ID": "audited-page-7"}
    found = client.get("/fhir/Patient", params={"family": "Pérez"}, headers=page)
    assert found.status_code == 200 and found.json()["total"] == 3
    assert services.compliance is not None
    services.compliance.audit_views_current()
    with services.views.read() as tx:
        found_page = search_audit(tx, AuditQuery({}, {}, []), 100_000)
        (nid,) = [a.notification_id for a in found_page if a.entry.request_id == "audited-page-7"]
        rows = tx.execute("SELECT param, value FROM audit_entry_refs WHERE audit_nid = ?", (nid,)).fetchall()
    refs = sorted((str(param), str(value)) for param, value in rows)
    expected = [
        *(("entity", f"Patient/{rid}") for rid in ids),
        *(("entity", f"Patient/{rid}/_history/1") for rid in ids),
        *(("patient", f"Patient/{rid}") for rid in ids),
    ]
    assert refs == sorted(expected)
    for param in ("entity", "patient"):
        searched = client.get("/fhir/AuditEvent", params={param: f"Patient/{ids[0]}"}, headers=HEADERS)
        assert searched.status_code == 200, searched.text
        assert "audited-page-7" in searched.text


def test_a_search_page_is_audited_from_the_rows_it_served_as_its_body_would_name_them(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search names what it served from the rows it read (fhir_api/disclosure.py): the entry's entities and
    patients are the ones the answer's body names (matches, includes, each patient once per resource), and
    the body is not decoded again. A page reshaped by ``_elements`` is still audited from its body."""
    patients = [client.post("/fhir/Patient", json=PATIENT, headers=HEADERS).json()["id"] for _ in range(2)]
    practitioner = client.post(
        "/fhir/Practitioner", json={"resourceType": "Practitioner", "name": [{"family": "Ruiz"}]}, headers=HEADERS
    ).json()["id"]
    for index, patient in enumerate(patients):
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "performer": [{"reference": f"Practitioner/{practitioner}"}],
            "valueQuantity": {"value": 120 + index, "unit": "mm[Hg]"},
        }
        assert client.post("/fhir/Observation", json=observation, headers=HEADERS).status_code == 201
    decoded = _counting_decodes(monkeypatch)
    searches = {
        "page-patients": ("/fhir/Patient", {"family": "Pérez"}),
        "page-observations": ("/fhir/Observation", {"code": "8480-6", "_include": "Observation:performer"}),
        "page-compartment": (f"/fhir/Patient/{patients[0]}/Observation", {}),
        "page-reshaped": ("/fhir/Observation", {"code": "8480-6", "_elements": "status"}),
    }
    answers = {}
    for request_id, (path, params) in searches.items():
        answer = client.get(path, params=params, headers={**HEADERS, "X-Request-ID": request_id})
        assert answer.status_code == 200, answer.text
        answers[request_id] = answer.content
    assert decoded == [answers["page-reshaped"]]  # only the reshaped page was decoded again
    for request_id, body in answers.items():
        entities: list[str] = []
        named: list[str] = []
        from_body(body, entities, named)
        entry = _entry_of(services, request_id)
        assert len(entities) >= (3 if request_id == "page-observations" else 1)
        # A compartment search also names the Patient of its path, first
        named_by_path = [f"Patient/{patients[0]}"] if request_id == "page-compartment" else []
        assert entry["entities"] == list(dict.fromkeys([*named_by_path, *entities])), request_id
        assert entry["patients"] == list(dict.fromkeys(named)), request_id
    observations = _entry_of(services, "page-observations")
    assert f"Practitioner/{practitioner}/_history/1" in observations["entities"]
    assert sorted(observations["patients"]) == sorted(patients)
