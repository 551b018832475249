"""Break-the-glass is recorded as an event of the audit log (``BreakGlassAccess.Granted``), on both backends:
the review list (``break_glass_log``) is its projection, shows each access as soon as it is answered,
comes back whole from ``ehr rebuild``, and the audit ledger signs the event like any other."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from eventsourcing.utils import get_topic
from fastapi.testclient import TestClient

from ehr_core.audit import BreakGlassAccess
from ehr_core.ledger import check_proof
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.auth import mint_development_token
from fhir_api.registry import NAMES
from fhir_api.services import Services
from fhir_api.web.compliance import break_glass_for
from projections.access import break_glass_entries
from projections.ledger import verify
from tests.integration.compliance.conftest import Cli

FHIR = {"Content-Type": "application/fhir+json"}
GRANTED = get_topic(BreakGlassAccess.Granted)


def _auth(settings: Settings, institution: str, user: str, role: str, unit: str) -> dict[str, str]:
    claims = {"institution": institution, "user": user, "role": role, "unit": unit, "scope": "user/*.cruds"}
    return {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


def _review_list(services: Services) -> list[tuple[Any, ...]]:
    with services.views.read() as tx:
        rows = tx.execute("SELECT * FROM break_glass_log ORDER BY audit_nid").fetchall()
    return [tuple(row) for row in rows]


def _granted_events(services: Services) -> dict[int, Any]:
    """Every break-the-glass event of the audit log, by notification id (read from the log, not the views)."""
    audit_log = services.compliance.audit_log
    notifications = audit_log.recorder.select_notifications(start=1, limit=100_000, topics=[GRANTED])
    return {n.id: audit_log.mapper.to_domain_event(n) for n in notifications}


@pytest.fixture
def secured(settings: Settings) -> Settings:
    return settings.model_copy(update={"auth": "required"})


@pytest.fixture
def server(secured: Settings) -> Iterator[tuple[TestClient, Services]]:
    services = Services.open(secured)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client, services
    finally:
        services.close()


def _accesses(client: TestClient, services: Services, secured: Settings) -> str:
    """IMSS records a patient; ISSSTE staff break the glass three ways, each seen in the review list at once."""
    imss = _auth(secured, "IMSS", "dr.imss", "physician", "DFIMS000020")
    pid = client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Robles"}]}, headers=FHIR | imss
    )
    assert pid.status_code == 201, pid.text
    patient = pid.json()["id"]
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "glucosa"},
                   "subject": {"reference": f"Patient/{patient}"}}  # fmt: skip
    assert client.post("/fhir/Observation", json=observation, headers=FHIR | imss).status_code == 201
    doctor = _auth(secured, "ISSSTE", "dr.urgencias", "physician", "DFSSA001234")
    nurse = _auth(secured, "ISSSTE", "enf.turno", "nurse", "DFSSA001234")
    requests = [
        (doctor, f"/fhir/Patient/{patient}", "paciente inconsciente en urgencias", f"Patient/{patient}"),
        (
            nurse,
            f"/fhir/Patient/{patient}/$everything",
            "alergias antes de transfundir",
            f"Patient/{patient}/$everything",
        ),
        (doctor, f"/fhir/Observation?subject=Patient/{patient}", "glucosa en choque", "search Observation"),
    ]
    for number, (headers, path, reason, target) in enumerate(requests, start=1):
        answer = client.get(path, headers=headers | {"X-EHR-Break-Glass": reason})
        assert answer.status_code == 200, answer.text
        assert answer.headers.get("x-ehr-break-glass") == "granted"
        # Read-your-writes: the review list shows the access as soon as it is answered.
        listed = _review_list(services)
        assert len(listed) == number
        assert listed[-1][2:] == ("ISSSTE", "DFSSA001234", *_who(headers, doctor), reason, target)
    with services.views.read() as tx:
        shown = break_glass_entries(tx, [patient])  # what the compliance page lists for the patient
    assert [row[6] for row in shown] == [f"Patient/{patient}/$everything", f"Patient/{patient}"]
    page = break_glass_for(services, [patient])  # the web view's compliance page
    assert [(b.user, b.reason) for b in page] == [
        ("enf.turno", "alergias antes de transfundir"),
        ("dr.urgencias", "paciente inconsciente en urgencias"),
    ]
    return patient


def _who(headers: dict[str, str], doctor: dict[str, str]) -> tuple[str, str]:
    return ("dr.urgencias", "physician") if headers is doctor else ("enf.turno", "nurse")


def test_each_break_the_glass_is_an_event_and_the_review_list_its_projection(
    server: tuple[TestClient, Services], secured: Settings
) -> None:
    client, services = server
    _accesses(client, services, secured)
    events = _granted_events(services)
    listed = _review_list(services)
    assert len(events) == 3
    # One row per event, keyed by its place in the log, with what the event says (when: its timestamp).
    assert [row[0] for row in listed] == sorted(events)
    for row in listed:
        event = events[row[0]]
        assert row[2:] == (event.institution, event.unit, event.user, event.role, event.reason, event.target)
        assert row[1] == event.timestamp.isoformat(timespec="microseconds")
    # The registry's projection: /metrics reports it beside the others, following the audit log, caught up.
    assert "break_glass" in NAMES
    metrics = client.get("/metrics").text
    position = re.search(r'^ehr_projection_position\{projection="break_glass"\} (\S+)$', metrics, re.MULTILINE)
    assert position is not None and float(position.group(1)) >= max(events)


def test_rebuild_from_the_log_reproduces_the_review_list(secured: Settings, ehr: Cli) -> None:
    services = Services.open(secured)
    try:
        with TestClient(create_app(services=services)) as client:
            _accesses(client, services, secured)
            services.compliance.audit_writer.flush()
        before = _review_list(services)
        assert len(before) == 3
        with services.views.write() as tx:
            tx.execute("DROP TABLE break_glass_log")  # the projections dropped
    finally:
        services.close()
    assert ehr("rebuild", "--quiet") == 0  # every projection of the registry, the review list among them
    reopened = Services.open(secured, follow=False)
    try:
        assert _review_list(reopened) == before
        with reopened.views.write() as tx:  # a reviewer's row removed by hand...
            tx.execute("DELETE FROM break_glass_log WHERE audit_nid = ?", (before[0][0],))
    finally:
        reopened.close()
    assert ehr("verify", "--log", "audit", "--quiet") == 1  # ...is found against the signed log...
    assert ehr("rebuild", "break_glass", "--quiet") == 0  # ...and given back by the log
    assert ehr("verify", "--log", "audit", "--quiet") == 0
    reopened = Services.open(secured, follow=False)
    try:
        assert _review_list(reopened) == before
        with reopened.views.write() as tx:  # a row no access stands behind
            tx.execute(
                "INSERT INTO break_glass_log (audit_nid, recorded, institution, unit, user_id, role, reason, target) "
                "VALUES (?, ?, 'ISSSTE', NULL, 'nadie', NULL, 'inventado', 'Patient/x')",
                (before[-1][0] + 1, before[-1][1]),
            )
    finally:
        reopened.close()
    assert ehr("verify", "--log", "audit", "--quiet") == 1


def test_the_break_the_glass_event_is_signed_by_the_audit_ledger(
    server: tuple[TestClient, Services], secured: Settings
) -> None:
    client, services = server
    _accesses(client, services, secured)
    compliance = services.compliance
    compliance.audit_writer.flush()
    compliance.audit_ledger.seal(partial=True)
    report = verify(compliance.audit_log, services.views, compliance.key.public_key, "audit_ledger")
    assert report.ok, report.problems
    for notification_id in _granted_events(services):
        proof = compliance.audit_ledger.proof(notification_id)
        assert proof is not None
        assert proof["event"]["topic"] == GRANTED
        assert check_proof(proof, compliance.key.public_key) == []


def test_a_review_list_from_before_the_events_is_kept_aside(secured: Settings) -> None:
    """A ``break_glass_log`` written at request time (no log behind it, so nothing can rebuild it) is kept as
    ``break_glass_log_legacy``, and the projection starts its own list from the log."""
    services = Services.open(secured, follow=False)
    try:
        with services.views.write() as tx:
            tx.execute("DROP TABLE break_glass_log")
            tx.execute(
                "CREATE TABLE break_glass_log (recorded TEXT NOT NULL, institution TEXT NOT NULL, unit TEXT, "
                "user_id TEXT NOT NULL, role TEXT, reason TEXT NOT NULL, target TEXT NOT NULL, "
                "reviewed INTEGER NOT NULL DEFAULT 0)"
            )
            tx.execute(
                "INSERT INTO break_glass_log (recorded, institution, user_id, reason, target) "
                "VALUES ('2026-01-02T03:04:05+00:00', 'ISSSTE', 'dr.antes', 'urgencia', 'Patient/p1')"
            )
    finally:
        services.close()
    server = Services.open(secured)
    try:
        with server.views.read() as tx:
            kept = tx.execute("SELECT user_id, reason FROM break_glass_log_legacy").fetchall()
        assert [tuple(row) for row in kept] == [("dr.antes", "urgencia")]
        with TestClient(create_app(services=server)) as client:
            _accesses(client, server, secured)
        assert len(_review_list(server)) == 3
    finally:
        server.close()


@pytest.mark.postgres
def test_an_access_that_cannot_be_recorded_is_refused(postgres_settings: Settings) -> None:
    """Break-the-glass is granted only once recorded: while the audit log's table cannot be appended to (held
    by another session past the lock timeout), the read answers 503 and discloses nothing."""
    secured = postgres_settings.model_copy(update={"auth": "required", "postgres_lock_timeout_seconds": 1})
    services = Services.open(secured)
    try:
        with TestClient(create_app(services=services)) as client:
            imss = _auth(secured, "IMSS", "dr.imss", "physician", "DFIMS000020")
            patient = {"resourceType": "Patient", "name": [{"family": "Robles"}]}
            pid = client.post("/fhir/Patient", json=patient, headers=FHIR | imss).json()["id"]
            services.compliance.audit_writer.flush()
            issste = _auth(secured, "ISSSTE", "dr.urgencias", "physician", "DFSSA001234")
            table = f'"{secured.postgres_schema}".audit_events'
            with psycopg.connect(secured.postgres_conninfo(), autocommit=True) as holder, holder.transaction():
                holder.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")  # what an appender takes
                answer = client.get(f"/fhir/Patient/{pid}", headers=issste | {"X-EHR-Break-Glass": "urgencia"})
            assert answer.status_code == 503, answer.text
            issue = answer.json()["issue"][0]
            assert issue["code"] == "transient" and "break-the-glass could not be recorded" in issue["diagnostics"]
            assert "Robles" not in answer.text and "x-ehr-break-glass" not in answer.headers
            assert _review_list(services) == [] and _granted_events(services) == {}
    finally:
        services.close()
