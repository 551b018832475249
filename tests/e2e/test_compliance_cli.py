"""Audit and ledger checks end to end: a real server, then ``ehr verify``, ``ehr verify-proof`` and
``ehr audit replay`` as real processes (their exit codes), on each backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ehr_core.settings import Settings
from tests.support.server import REPO

HEADERS = {"X-EHR-User": "dra.lopez", "X-EHR-Institution": "IMSS", "X-EHR-Unit": "DFIMS000123"}


def _ehr(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_api.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_verify_proof_and_replay_as_processes(fhir_server: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # No EHR_DATA_DIR: every command is told the data directory (the ledger keys, the SQLite files) by --data.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    data = ("--data", str(tmp_path / "ehr-data"))
    if request.node.callspec.params["fhir_server"] == "postgres":
        settings: Settings = request.getfixturevalue("postgres_settings")
        env |= {"EHR_DATABASE_URL": str(settings.database_url), "EHR_POSTGRES_SCHEMA": settings.postgres_schema}
    with httpx.Client(base_url=fhir_server, headers=HEADERS, timeout=30, trust_env=False) as client:
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "glucose"},
            "subject": {"reference": "Patient/p-e2e"},
        }
        created = client.post("/Observation", json=observation).json()
        read = client.get(f"/Observation/{created['id']}")
        assert read.status_code == 200
        proof = client.get("/$ledger-proof", params={"resource": f"Observation/{created['id']}", "version": "1"})
        assert proof.status_code == 200, proof.text
        (tmp_path / "proof.json").write_text(proof.text)
        (tmp_path / "key.pem").write_text(client.get("/$ledger-key").text)

    verified = _ehr(env, "verify", "--quiet", *data)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Both logs by default: the clinical log's ledger, then the audit log's.
    said = verified.stdout.splitlines()
    assert said[0].startswith("intact: "), verified.stdout
    assert any(line.startswith("audit log: intact: ") for line in said[1:]), verified.stdout
    clinical = _ehr(env, "verify", "--quiet", "--log", "clinical", "--public-key", str(tmp_path / "key.pem"), *data)
    assert clinical.returncode == 0, clinical.stdout + clinical.stderr
    assert [line.split(":")[0] for line in clinical.stdout.splitlines()] == ["intact"], clinical.stdout
    checked = _ehr(env, "verify-proof", str(tmp_path / "proof.json"), "--public-key", str(tmp_path / "key.pem"))
    assert checked.returncode == 0 and checked.stdout.startswith("valid: "), checked.stdout + checked.stderr
    replay = _ehr(env, "audit", "replay", "--patient", "p-e2e", "--format", "ndjson", *data)
    assert replay.returncode == 0, replay.stderr
    lines = [json.loads(line) for line in replay.stdout.splitlines()]
    assert [(line["kind"], line["resources"]) for line in lines] == [
        ("write", f"Observation/{created['id']}/_history/1"),
        ("access", f"Observation/{created['id']}/_history/1"),
    ]
