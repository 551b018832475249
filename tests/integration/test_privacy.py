"""Crypto-shredding and ARCO blocks, end to end through the HTTP API (both backends)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.context import WriteContext
from ehr_core.demo.people import make_curp, make_nss
from ehr_core.identity.identifiers import CURP_SYSTEM, NSS_SYSTEM
from ehr_core.keys import Erased
from ehr_core.ledger import LedgerKey
from ehr_core.privacy import Privacy, RetentionActive
from ehr_core.settings import Settings
from fhir_api.cli import main
from fhir_api.services import Services
from projections.identity import IdentityIndex
from projections.ledger import verify

OFFICER = WriteContext(institution="IMSS", user="privacy.officer", role="privacy-officer")
FHIR = {"Content-Type": "application/fhir+json"}
PRIVATE_TABLES = {"erased_resources", "erased_patients"}
# Tables that keep an erased patient's opaque id on purpose, never their content: what was erased (so
# reads answer 410), and the access trail, which the law keeps (NOM-024 traceability) and which names
# resources by id. Every other table of the views database must forget the patient entirely.
RETAINED_TABLES = PRIVATE_TABLES | {"audit_entries", "audit_entry_refs", "break_glass_log"}
# On PostgreSQL the logs share the schema with the views: the event log keeps the patient's ciphertext (the
# ledger hashes it) and the key table the shredded key's row (compartment id, no key); neither is a projection.
LOG_TABLES = {"ehr_events", "ehr_data_keys", "audit_events"}


def _patient_with_record(client: TestClient, family: str) -> dict[str, str]:
    born, rng = date(1961, 4, 5), random.Random(family)
    curp, nss = make_curp(["Ana"], family, "", "M", born, "DF", rng), make_nss(born, rng)
    patient = client.post(
        "/fhir/Patient",
        json={
            "resourceType": "Patient",
            "identifier": [{"system": CURP_SYSTEM, "value": curp}, {"system": NSS_SYSTEM, "value": nss}],
            "name": [{"family": family, "given": ["Ana"]}],
            "gender": "female",
            "birthDate": born.isoformat(),
        },
        headers=FHIR,
    )
    assert patient.status_code == 201, patient.text
    pid = patient.json()["id"]
    ref = {"reference": f"Patient/{pid}"}
    observation = client.post(
        "/fhir/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}]},
            "subject": ref,
            # A reference out of the compartment: its index row is the erased Observation's, not its target's.
            "performer": [{"reference": "Practitioner/dr-que-se-queda"}],
            "valueQuantity": {"value": 181, "unit": "mg/dL"},
        },
        headers=FHIR,
    ).json()
    condition = client.post(
        "/fhir/Condition",
        json={"resourceType": "Condition", "code": {"coding": [{"code": "44054006"}]}, "subject": ref},
        headers=FHIR,
    ).json()
    # A second version and a retraction: history and tombstones must go too.
    observation["valueQuantity"]["value"] = 182
    assert client.put(f"/fhir/Observation/{observation['id']}", json=observation, headers=FHIR).status_code == 200
    assert client.delete(f"/fhir/Condition/{condition['id']}").status_code in (200, 204)
    return {
        "Patient": pid,
        "Observation": observation["id"],
        "Condition": condition["id"],
        "family": family,
        "curp": curp,
        "nss": nss,
    }


def _rows(services: Services) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of every projection built from the clinical log: resource views, search index, provenance,
    access, and the identity index (MPI records, links, review queue, sources)."""
    assert services.identity is not None
    services.identity.catch_up()
    dumped = {**services.projector.dump(), **services.identity.dump()}
    return {t: rows for t, rows in dumped.items() if t not in PRIVATE_TABLES}


def _every_table(services: Services) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the views database (audit views and ledgers included), found from its catalog."""
    with services.views.read() as tx:
        if services.views.dialect == "postgres":
            names = tx.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            ).fetchall()
        else:
            names = tx.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        tables = sorted({str(n[0]) for n in names} - LOG_TABLES)
        return {t: tx.execute(f"SELECT * FROM {t}").fetchall() for t in tables}


def _mentions(rows: dict[str, list[tuple[Any, ...]]], needles: list[str]) -> list[str]:
    return [f"{t}: {row!r}"[:200] for t, rs in rows.items() for row in rs if any(n in repr(row) for n in needles)]


def _ids(record: dict[str, str]) -> list[str]:
    return [
        record[k] for k in ("Patient", "Observation", "Condition", "family", "curp", "nss", "person") if k in record
    ]


def test_shredding_refuses_during_retention_then_forced_erases_the_patient_everywhere(
    client: TestClient, services: Services
) -> None:
    gone, kept = _patient_with_record(client, "Olvidada"), _patient_with_record(client, "Conservada")
    before = _rows(services)
    assert _mentions(before, _ids(gone))
    # The full-text index holds the family name's stem ("olvid"), in its FTS5 segments on SQLite too.
    assert _mentions(_every_table(services), ["olvid"])
    assert client.get("/fhir/Patient", params={"_content": "olvidada"}).json()["entry"]
    # The identity index held their CURP, NSS and name before (so its emptiness afterwards means something).
    assert all(_mentions({"mpi_records": before["mpi_records"]}, [value]) for value in (gone["curp"], gone["nss"]))
    privacy = Privacy(services.application)

    with pytest.raises(RetentionActive, match="NOM-004"):
        privacy.shred(gone["Patient"], "ARCO cancellation folio 17", OFFICER)
    assert client.get(f"/fhir/Patient/{gone['Patient']}").status_code == 200  # nothing happened

    report = privacy.shred(gone["Patient"], "Court order 123/2026, Juzgado 4o", OFFICER, force=True)
    assert report.forced and report.events == 5
    assert set(report.resources) == {(t, gone[t]) for t in ("Patient", "Observation", "Condition")}
    services.projector.catch_up()

    # Reads of every one of their resources: 410 with an OperationOutcome.
    for path in (
        f"Patient/{gone['Patient']}",
        f"Observation/{gone['Observation']}",
        f"Observation/{gone['Observation']}/_history/1",
        f"Condition/{gone['Condition']}",
        f"Patient/{gone['Patient']}/_history",
    ):
        response = client.get(f"/fhir/{path}")
        assert response.status_code == 410, path
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome" and "erased" in outcome["issue"][0]["diagnostics"]
    # Searches and lists no longer find them.
    found = client.get("/fhir/Observation", params={"subject": f"Patient/{gone['Patient']}"}).json()
    assert found.get("total", 0) == 0 and not found.get("entry")
    assert client.get("/fhir/Patient", params={"name": "Olvidada"}).json()["entry"] == []
    assert client.get("/fhir/Patient", params={"_content": "olvidada"}).json()["entry"] == []
    assert gone["Observation"] not in client.get("/fhir/_history").text
    # Writes for them are refused: the key is gone.
    again = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
             "subject": {"reference": f"Patient/{gone['Patient']}"}}  # fmt: skip
    assert client.post("/fhir/Observation", json=again, headers=FHIR).status_code == 410
    with pytest.raises(Erased):
        services.application.stream("Observation", gone["Observation"])

    # Every projection: no row of theirs; every row of the other patient exactly as before.
    after = _rows(services)
    assert _mentions(after, _ids(gone)) == []
    for table, rows in after.items():
        assert set(rows) <= set(before[table]), table
    assert sorted(_mentions(after, _ids(kept))) == sorted(_mentions(before, _ids(kept)))
    assert client.get(f"/fhir/Patient/{kept['Patient']}").status_code == 200
    assert _mentions(after, [kept["curp"], kept["nss"]]), "the other patient's identity rows are kept"
    # Every table of the views database, projections or not, besides the ones that keep ids on purpose.
    everywhere = {t: rows for t, rows in _every_table(services).items() if t not in RETAINED_TABLES}
    assert len(everywhere) >= len(after)
    assert _mentions(everywhere, _ids(gone)) == []
    assert _mentions(everywhere, ["olvid"]) == []  # no stem left in the full-text index's segments either

    # A fresh rebuild from the log: the same views, none of their data (their events no longer decrypt).
    services.projector.reset()
    services.projector.catch_up()
    assert services.identity is not None
    services.identity.reset()
    services.identity.catch_up()
    assert _rows(services) == after
    assert client.get(f"/fhir/Observation/{gone['Observation']}").status_code == 410

    # The log is intact: the ledger (which hashes stored bytes) still verifies.
    assert services.compliance is not None
    services.compliance.ledger.seal(partial=True)
    public_key = LedgerKey.configured(services.settings.data_dir).public_key
    checked = verify(services.application, services.views, public_key, "ledger")
    assert checked.ok, checked.problems
    assert checked.events >= 12


def test_shredding_drops_the_review_candidates_of_a_person_made_of_that_record_alone(
    client: TestClient, services: Services
) -> None:
    gone = _patient_with_record(client, "Olvidada")
    # A record of another institution that may be the same person: a candidate in the MPI review queue.
    doubt = {"resourceType": "Patient", "name": [{"family": "Olvidada", "given": ["Ana"]}], "gender": "female",
             "birthDate": "1961-04-06"}  # fmt: skip
    created = client.post("/fhir/Patient", json=doubt, headers=FHIR | {"X-EHR-Institution": "ISSSTE"})
    assert created.status_code == 201
    other = created.json()["id"]
    before = _rows(services)
    with services.views.read() as tx:
        person = IdentityIndex.person_of(tx, gone["Patient"])
    assert person is not None and [row for row in before["mpi_review"] if row[0] == other and row[1] == person]

    Privacy(services.application).shred(gone["Patient"], "orden judicial 5/2026", OFFICER, force=True)
    services.projector.catch_up()
    after = _rows(services)
    # The person was made of the shredded record alone: no row names it any more (nor the record).
    assert _mentions(after, [person, gone["Patient"], gone["curp"]]) == []
    # The other record stays in the index, as it was, only without the candidate that is gone.
    assert [row for row in after["mpi_records"] if row[0] == other] == [
        row for row in before["mpi_records"] if row[0] == other
    ]
    assert services.identity is not None
    services.identity.reset()
    services.identity.catch_up()
    assert _rows(services) == after


def test_after_retention_shredding_needs_no_force(client: TestClient, services: Services) -> None:
    gone = _patient_with_record(client, "Antigua")
    later = datetime.now(UTC) + timedelta(days=5 * 366)
    report = Privacy(services.application).shred(gone["Patient"], "retention ended", OFFICER, now=later)
    assert not report.forced
    services.projector.catch_up()
    assert client.get(f"/fhir/Patient/{gone['Patient']}").status_code == 410


def test_arco_cancellation_during_retention_blocks_instead_of_erasing(client: TestClient, services: Services) -> None:
    blocked, kept = _patient_with_record(client, "Bloqueada"), _patient_with_record(client, "Libre")
    report = Privacy(services.application).block(blocked["Patient"], "ARCO folio 2026-0042", OFFICER)
    assert report.action == "blocked" and report.retained_until is not None
    services.projector.catch_up()
    for path in (f"Patient/{blocked['Patient']}", f"Observation/{blocked['Observation']}"):
        response = client.get(f"/fhir/{path}")
        assert response.status_code == 403, path
        assert "ARCO" in response.json()["issue"][0]["diagnostics"]
    assert _mentions(_rows(services), _ids(blocked)) == []
    assert client.get(f"/fhir/Patient/{kept['Patient']}").status_code == 200
    # Not erased: the log still decrypts (kept for NOM-004), but nothing new may be written.
    stream = services.application.stream("Observation", blocked["Observation"])
    assert stream is not None and "182" in (stream.resource or "")
    again = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
             "subject": {"reference": f"Patient/{blocked['Patient']}"}}  # fmt: skip
    assert client.post("/fhir/Observation", json=again, headers=FHIR).status_code == 403
    services.projector.reset()
    services.projector.catch_up()
    assert _mentions(_rows(services), _ids(blocked)) == []


def test_ehr_shred_command_refuses_in_retention_and_records_a_forced_legal_basis(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    services = Services.open(sqlite_settings, follow=False)
    try:
        written = services.application.create({"resourceType": "Patient", "name": [{"family": "Cli"}]}, OFFICER)
    finally:
        services.close()
    monkeypatch.setenv("EHR_DATA_DIR", str(sqlite_settings.data_dir))
    pid = written.resource_id
    assert main(["shred", "--patient", pid, "--legal-basis", "solicitud ARCO"]) == 1
    assert "retention" in capsys.readouterr().err
    assert main(["shred", "--patient", pid, "--legal-basis", "orden judicial 9/2026", "--force"]) == 0
    assert "FORCED" in capsys.readouterr().out
    services = Services.open(sqlite_settings, follow=False)
    try:
        events = services.application.recorder.select_notifications(start=1, limit=100)
        erasure = services.application.mapper.to_domain_event(events[-1])
        assert getattr(erasure, "legal_basis", None) == "orden judicial 9/2026" and getattr(erasure, "forced", False)
        with services.views.read() as tx:
            assert tx.execute("SELECT COUNT(*) FROM resources").fetchone() == (0,)
    finally:
        services.close()
