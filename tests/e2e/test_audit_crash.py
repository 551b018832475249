"""An access audited through the audit middleware survives SIGKILL of the server right after the answer.

"Every access audited, nothing lost on crash": the middleware completes the answer only once the access's
audit entry is committed (fhir_api/audit_middleware.py), so a client holding an answer can count on its
AuditEvent. A real server on each backend reads a Patient, is killed with SIGKILL the moment the answer
has arrived, and is started again: the AuditEvent of that read (action R, the version read) must be there.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehr_core.settings import Settings
from tests.support.server import start_server

pytestmark = [pytest.mark.e2e]

HEADERS = {"X-EHR-User": "dra.lopez", "X-EHR-Institution": "IMSS", "X-EHR-Unit": "DFIMS000123"}
#: Kills per backend: one is the claim; a few make a lost entry show even when a commit races the kill.
ATTEMPTS = 2


def _env(request: pytest.FixtureRequest, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env |= {"EHR_DATA_DIR": str(data), "EHR_AUTH": "disabled-for-development", "PYTHONUNBUFFERED": "1"}
    if request.param == "postgres":
        settings: Settings = request.getfixturevalue("postgres_settings")
        env |= {"EHR_DATABASE_URL": str(settings.database_url), "EHR_POSTGRES_SCHEMA": settings.postgres_schema}
    return env


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return _env(request, tmp_path / "ehr-data")


def _reads_audited(base: str, patient: str) -> set[str]:
    """The request ids (X-Request-ID) of the read (R) AuditEvents of ``Patient/patient`` (IHE BALP)."""
    found = httpx.get(f"{base}/AuditEvent", params={"entity": f"Patient/{patient}", "_count": 100}, headers=HEADERS)
    assert found.status_code == 200, found.text[:500]
    events = [entry["resource"] for entry in found.json().get("entry", [])]
    return {
        str(entity["what"]["identifier"]["value"])
        for event in events
        if event.get("action") == "R" and f"Patient/{patient}/_history/1" in _references(event)
        for entity in event.get("entity", [])
        if "identifier" in entity.get("what", {})
    }


def _references(event: dict[str, Any]) -> set[str]:
    return {str(entity["what"].get("reference")) for entity in event.get("entity", [])}


def test_a_read_answered_before_sigkill_is_audited(server_env: dict[str, str], tmp_path: Path) -> None:
    read: dict[str, str] = {}  # Patient id: the X-Request-ID of its read
    for attempt in range(ATTEMPTS):
        process, base = start_server(server_env, tmp_path)
        try:
            patient = {"resourceType": "Patient", "name": [{"family": f"Crash{attempt}"}]}
            created = httpx.post(f"{base}/Patient", json=patient, headers=HEADERS, timeout=60)
            assert created.status_code == 201, created.text[:500]
            patient_id, request_id = created.json()["id"], f"crash-read-{uuid.uuid4()}"
            read[patient_id] = request_id
            with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as client:
                answer = client.get(f"/Patient/{patient_id}", headers={"X-Request-ID": request_id})
                process.send_signal(signal.SIGKILL)  # the moment the answer is in
            assert answer.status_code == 200, answer.text[:500]
            assert answer.headers["etag"] == 'W/"1"'
        finally:
            process.kill()
            process.wait()
    process, base = start_server(server_env, tmp_path)
    try:
        missing = [patient for patient, request in read.items() if request not in _reads_audited(base, patient)]
        assert missing == [], f"reads answered and then lost to SIGKILL, unaudited: {len(missing)} of {len(read)}"
    finally:
        process.terminate()
        process.wait()
