"""``ehr serve --workers N``: several API processes over one PostgreSQL store, the default configuration.

- Read-your-writes holds across the processes with the projection inline (the default): every create is
  readable and searchable the moment it is answered, on a fresh connection, whichever process takes it.
- The background work each process runs (audit writer, ledger sealer, log followers) shares the store:
  afterwards both ledgers (clinical and audit log) verify with ``ehr verify``, every access left its audit
  entry, and the identity index matched the records.
- SQLite has one writer: ``--workers`` above 1 is refused there, with the reason, before anything starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehr_core.settings import Settings
from tests.support.server import REPO, running_server

pytestmark = [pytest.mark.e2e]

CREATES = 24


def _patient(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:workers", "value": f"w-{i}"}],
        "name": [{"family": f"Trabajadores{i}", "given": ["Ana"]}],
        "gender": "female",
        "birthDate": f"1980-01-{i % 28 + 1:02d}",
    }


def _env(settings: Settings, data: Path) -> dict[str, str]:
    assert settings.database_url is not None
    return {
        "EHR_DATABASE_URL": settings.database_url,
        "EHR_POSTGRES_SCHEMA": settings.postgres_schema,
        "EHR_POSTGRES_POOL_SIZE": "3",  # PostgreSQL's connections are shared by every test run on the machine
        "EHR_DATA_DIR": str(data),
    }


def _verify(env: dict[str, str], log: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")} | env
    command = [sys.executable, "-m", "fhir_api.cli", "verify", "--log", log, "--quiet"]
    return subprocess.run(command, cwd=REPO, env=full, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.postgres
def test_two_processes_serve_one_store_with_read_your_writes(postgres_settings: Settings, tmp_path: Path) -> None:
    data = tmp_path / "ehr-data"
    env = _env(postgres_settings, data)
    with running_server(data, env, workers=2) as (base, _):
        ids: list[str] = []
        for i in range(CREATES):
            # A fresh connection per request: the kernel hands each to either process.
            created = httpx.post(f"{base}/Patient", json=_patient(i), timeout=60)
            assert created.status_code == 201, created.text
            resource_id = created.json()["id"]
            ids.append(resource_id)
            read = httpx.get(f"{base}/Patient/{resource_id}", timeout=60)
            assert read.status_code == 200, read.text
            assert read.json()["identifier"][0]["value"] == f"w-{i}"
            found = httpx.get(f"{base}/Patient", params={"identifier": f"urn:test:workers|w-{i}"}, timeout=60)
            assert found.status_code == 200, found.text
            assert [e["resource"]["id"] for e in found.json().get("entry", [])] == [resource_id]
        audit = httpx.get(f"{base}/AuditEvent", params={"entity": f"Patient/{ids[0]}", "_count": 50}, timeout=60)
        assert audit.status_code == 200, audit.text
        # The create, the read and the search of the first patient, whichever process answered each.
        actions = sorted(e["resource"]["action"] for e in audit.json().get("entry", []))
        assert actions.count("C") == 1 and actions.count("R") >= 1 and actions.count("E") >= 1, actions
    for log in ("record", "audit"):
        checked = _verify(env, log)
        assert checked.returncode == 0, f"ehr verify --log {log}: {checked.stdout[-2000:]} {checked.stderr[-2000:]}"


def test_sqlite_refuses_several_processes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    command = [sys.executable, "-m", "fhir_api.cli", "serve", "--port", "0", "--data", str(tmp_path / "d")]
    done = subprocess.run(
        [*command, "--workers", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "needs PostgreSQL" in done.stderr
