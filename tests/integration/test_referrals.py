"""Referral and counter-referral (ServiceRequest + Task) across institutions, with auth ON (both backends).

An accepted referral lets the receiving institution read the referred patient's record until it is cancelled
(at once), or for the configured days after completion; a requested or rejected one grants nothing; only the
receiving institution accepts or rejects, only the referring one cancels; a referral never widens a
``patient/`` scope; the grants are a projection of the log (``ehr rebuild`` gives the same rows); reads under
a referral grant say so in their AuditEvent; ``Patient/$access-grants`` tells who, why and until when.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.auth import mint_development_token
from fhir_api.cli.rebuild import projectors_named
from fhir_api.services import Services
from projections.rebuild import rebuild
from tests.support.access import referral, referral_task, secured_server, staff_headers

FHIR = {"Content-Type": "application/fhir+json"}
RURAL = "OCIMB000123"  # Centro de Salud Rural San Juan Bautista (IMSS-Bienestar)


@pytest.fixture
def world(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[tuple[TestClient, Services, Settings]]:
    backend = "sqlite" if settings.database_url is None else "postgres"
    with secured_server(request, backend, tmp_path / "ehr-data") as opened:
        yield opened


def _create(client: TestClient, headers: dict[str, str], resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR | headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _total(client: TestClient, url: str, headers: dict[str, str]) -> int:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


def _move(client: TestClient, headers: dict[str, str], task_id: str, status: str, **extra: Any) -> int:
    """PUT the Task with a new status, as read by the writer (or as the referring side keeps it)."""
    current = client.get(f"/fhir/Task/{task_id}", headers=headers)
    assert current.status_code == 200, current.text
    body = current.json() | {"status": status} | extra
    body.pop("meta", None)
    return client.put(f"/fhir/Task/{task_id}", json=body, headers=FHIR | headers).status_code


def _referred(client: TestClient, settings: Settings) -> tuple[dict[str, dict[str, str]], str, str, str]:
    """IMSS-Bienestar's patient with an Observation, referred (requested) to ISSSTE."""
    heads = {name: staff_headers(settings, name) for name in ("IMSS-BIENESTAR", "ISSSTE", "IMSS")}
    pid = _create(client, heads["IMSS-BIENESTAR"], {"resourceType": "Patient", "name": [{"family": "Hernández"}]})
    obs = _create(
        client,
        heads["IMSS-BIENESTAR"],
        {"resourceType": "Observation", "status": "final", "code": {"text": "Glucosa"},
         "subject": {"reference": f"Patient/{pid}"}},
    )  # fmt: skip
    request = _create(client, heads["IMSS-BIENESTAR"], referral(pid, RURAL, "ISSSTE"))
    task = _create(client, heads["IMSS-BIENESTAR"], referral_task(pid, request, "ISSSTE"))
    return heads, pid, obs, task


def test_accepted_referral_grants_read_and_cancel_ends_it(world: tuple[TestClient, Services, Settings]) -> None:
    client, _, settings = world
    heads, pid, obs, task = _referred(client, settings)
    issste = heads["ISSSTE"]
    search = f"/fhir/Observation?subject=Patient/{pid}&_total=accurate"
    # Requested: the receiver sees what it is asked to accept (the Task and its ServiceRequest), not the record.
    assert client.get(f"/fhir/Task/{task}", headers=issste).status_code == 200
    assert client.get(f"/fhir/Observation/{obs}", headers=issste).status_code == 403
    assert _total(client, search, issste) == 0
    # The referring institution may not accept for the receiver; a third institution may not touch it.
    assert _move(client, heads["IMSS-BIENESTAR"], task, "accepted") == 403
    assert client.get(f"/fhir/Task/{task}", headers=heads["IMSS"]).status_code == 403
    body = referral_task(pid, "x", "ISSSTE", "accepted") | {"id": task}
    assert client.put(f"/fhir/Task/{task}", json=body, headers=FHIR | heads["IMSS"]).status_code == 403
    # The receiver accepts: the referred patient's record opens to it, on every path.
    assert _move(client, issste, task, "accepted") == 200
    read = client.get(f"/fhir/Observation/{obs}", headers=issste)
    assert read.status_code == 200, read.text
    assert _total(client, search, issste) == 1
    assert client.get(f"/fhir/Patient/{pid}/$everything", headers=issste).status_code == 200
    # Visible: who, why, until when.
    grants = client.get(f"/fhir/Patient/{pid}/$access-grants", headers=issste)
    assert grants.status_code == 200, grants.text
    found = [{p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in g["part"]}
             for g in grants.json()["parameter"] if g["name"] == "grant"]  # fmt: skip
    assert found == [
        {"patient": {"reference": f"Patient/{pid}"}, "institution": "ISSSTE", "basis": "referral",
         "source": {"reference": f"Task/{task}"}, "start": found[0]["start"], "active": True}
    ]  # fmt: skip
    # Audited: the read names the referral it was made under.
    trail = client.get("/fhir/AuditEvent", params={"entity": f"Observation/{obs}"}, headers=issste)
    assert trail.status_code == 200, trail.text
    events = [e["resource"] for e in trail.json().get("entry", [])]
    reads = [e for e in events if e["subtype"][0]["code"] == "read" and e["outcome"] == "0"]
    assert reads and all(f"Task/{task}" in e.get("outcomeDesc", "") for e in reads), events
    assert reads[0]["purposeOfEvent"][0]["text"] == f"Task/{task}"
    # Reading the Task it was asked to accept was also under that referral.
    trail = client.get("/fhir/AuditEvent", params={"entity": f"Task/{task}"}, headers=issste).json()
    task_reads = [
        e["resource"] for e in trail.get("entry", [])
        if e["resource"]["subtype"][0]["code"] == "read" and e["resource"]["agent"][1]["who"]["display"] == "ISSSTE"
    ]  # fmt: skip
    assert task_reads and all(f"Task/{task}" in e.get("outcomeDesc", "") for e in task_reads), task_reads
    # Only the referring institution cancels; then the grant ends at once.
    assert _move(client, issste, task, "cancelled") == 403
    assert _move(client, heads["IMSS-BIENESTAR"], task, "cancelled") == 200
    assert client.get(f"/fhir/Observation/{obs}", headers=issste).status_code == 403
    assert _total(client, search, issste) == 0
    assert client.get(f"/fhir/Patient/{pid}/$everything", headers=issste).status_code == 403


def test_rejected_referral_gives_no_grant(world: tuple[TestClient, Services, Settings]) -> None:
    client, _, settings = world
    heads, pid, obs, task = _referred(client, settings)
    issste = heads["ISSSTE"]
    assert _move(client, issste, task, "rejected", statusReason={"text": "sin cama disponible"}) == 200
    assert client.get(f"/fhir/Observation/{obs}", headers=issste).status_code == 403
    assert _total(client, f"/fhir/Observation?subject=Patient/{pid}&_total=accurate", issste) == 0
    # Rejected is final: the receiver cannot accept it afterwards (a new referral is needed).
    assert _move(client, issste, task, "accepted") == 422
    assert client.get(f"/fhir/Observation/{obs}", headers=issste).status_code == 403


def test_only_the_receiving_institution_accepts(world: tuple[TestClient, Services, Settings]) -> None:
    client, _, settings = world
    heads, pid, obs, task = _referred(client, settings)
    # A referral created already accepted by the referring side is refused: acceptance is the receiver's.
    request = _create(client, heads["IMSS-BIENESTAR"], referral(pid, RURAL, "IMSS"))
    premature = referral_task(pid, request, "IMSS", "accepted")
    response = client.post("/fhir/Task", json=premature, headers=FHIR | heads["IMSS-BIENESTAR"])
    assert response.status_code == 403, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    # IMSS is not the owner of the ISSSTE referral: it can neither accept it nor read through it.
    body = referral_task(pid, request, "ISSSTE", "accepted") | {"id": task}
    assert client.put(f"/fhir/Task/{task}", json=body, headers=FHIR | heads["IMSS"]).status_code == 403
    assert client.get(f"/fhir/Observation/{obs}", headers=heads["IMSS"]).status_code == 403
    # The receiver may not re-address the referral to someone else while accepting it.
    assert _move(client, heads["ISSSTE"], task, "accepted", owner={"display": "IMSS"}) == 403
    assert client.get(f"/fhir/Observation/{obs}", headers=heads["IMSS"]).status_code == 403


def test_completed_referral_keeps_a_bounded_grant(world: tuple[TestClient, Services, Settings]) -> None:
    client, _, settings = world
    heads, pid, obs, task = _referred(client, settings)
    issste = heads["ISSSTE"]
    assert _move(client, issste, task, "accepted") == 200
    assert _move(client, issste, task, "in-progress") == 200
    encounter = _create(
        client, issste, {"resourceType": "Encounter", "status": "finished", "subject": {"reference": f"Patient/{pid}"},
                         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}},
    )  # fmt: skip
    output = [{"type": {"text": "encounter"}, "valueReference": {"reference": f"Encounter/{encounter}"}}]
    assert _move(client, issste, task, "completed", output=output) == 200
    # Still readable after completion, for the configured follow-up period (an end is now set).
    assert client.get(f"/fhir/Observation/{obs}", headers=issste).status_code == 200
    grants = client.get(f"/fhir/Patient/{pid}/$access-grants", headers=heads["IMSS-BIENESTAR"]).json()
    parts = {p["name"] for g in grants["parameter"] for p in g["part"]}
    assert {"start", "end", "active"} <= parts
    # The referring institution reads the counter-referral's encounter? Not by this referral: it grants the
    # receiver only. A completed Task is final.
    assert _move(client, heads["IMSS-BIENESTAR"], task, "cancelled") == 422


def test_a_referral_never_widens_a_patient_scope(world: tuple[TestClient, Services, Settings]) -> None:
    client, _, settings = world
    heads, pid, obs, task = _referred(client, settings)
    issste = heads["ISSSTE"]
    assert _move(client, issste, task, "accepted") == 200
    # ISSSTE's own patient, through a patient-facing app of ISSSTE.
    own = _create(client, issste, {"resourceType": "Patient", "name": [{"family": "López"}]})
    claims = {"institution": "ISSSTE", "user": "app", "scope": "patient/*.rs", "patient": own}
    app = {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}
    assert client.get(f"/fhir/Patient/{own}", headers=app).status_code == 200
    # The referral lets ISSSTE staff read the referred patient, never the patient app.
    assert client.get(f"/fhir/Observation/{obs}", headers=issste).status_code == 200
    assert client.get(f"/fhir/Observation/{obs}", headers=app).status_code == 403
    assert client.get(f"/fhir/Patient/{pid}", headers=app).status_code == 403
    assert client.get(f"/fhir/Observation?subject=Patient/{pid}", headers=app).status_code == 403
    assert client.get(f"/fhir/Patient/{pid}/$everything", headers=app).status_code == 403
    assert _total(client, f"/fhir/Observation?subject=Patient/{own}&_total=accurate", app) == 0


def test_rebuild_reproduces_the_grants(world: tuple[TestClient, Services, Settings]) -> None:
    client, services, settings = world
    heads, pid, obs, task = _referred(client, settings)
    issste = heads["ISSSTE"]
    assert _move(client, issste, task, "accepted") == 200
    assert _move(client, issste, task, "completed") == 200
    # A second referral, cancelled; a third, still requested.
    for final in ("cancelled", None):
        request = _create(client, heads["IMSS-BIENESTAR"], referral(pid, RURAL, "IMSS"))
        other = _create(client, heads["IMSS-BIENESTAR"], referral_task(pid, request, "IMSS"))
        if final:
            assert _move(client, heads["IMSS"], other, "accepted") == 200
            assert _move(client, heads["IMSS-BIENESTAR"], other, final) == 200

    def rows() -> list[tuple[Any, ...]]:
        with services.views.read() as tx:
            grants = tx.execute(
                "SELECT resource_type, resource_id, patient_id, institution, period_start, period_end "
                "FROM consent_grants ORDER BY resource_id"
            ).fetchall()
            addressed = tx.execute(
                "SELECT resource_type, resource_id, institution, task_id FROM referral_addressees "
                "ORDER BY task_id, resource_type"
            ).fetchall()
        return [tuple(r) for r in grants] + [tuple(r) for r in addressed]

    live = rows()
    assert [r[:4] for r in live if r[0] == "Task" and len(r) == 6] == [("Task", task, pid, "ISSSTE")]
    rebuild(services.settings, projectors_named(services, ["resources"]))
    assert rows() == live
    assert client.get(f"/fhir/Observation/{obs}", headers=issste).status_code == 200
    assert client.get(f"/fhir/Observation/{obs}", headers=heads["IMSS"]).status_code == 403
