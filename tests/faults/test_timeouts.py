"""Request deadlines (``EHR_REQUEST_TIMEOUT_SECONDS``, fhir_api/limits.py) against a real server process.

- A body still arriving at the deadline: 408 OperationOutcome, nothing stored (RFC 9110 §15.5.9).
- A read stuck behind a lock past the deadline: 503 OperationOutcome with ``Retry-After``; the server
  answers normally once the lock is gone.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from ehr_core.settings import Settings
from tests.support.server import running_server

pytestmark = [pytest.mark.e2e]

DEADLINE = {"EHR_REQUEST_TIMEOUT_SECONDS": "1"}


def _stored(base: str) -> int:
    return int(httpx.get(f"{base}/_history", params={"_count": "0"}, timeout=30).json()["total"])


def test_body_arriving_too_slowly_is_408(tmp_path: Path) -> None:
    with running_server(tmp_path / "ehr-data", DEADLINE) as (base, _log):
        before = _stored(base)
        host, port = base.split("//")[1].split("/")[0].split(":")
        body = b'{"resourceType":"Patient","name":[{"family":"Lenta"}]}'
        head = (
            f"POST /fhir/Patient HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(head + body[:10])
            time.sleep(2.0)  # the rest never comes in time
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408"), answer[:300]
        outcome = json.loads(rest.split(b"\r\n\r\n", 1)[1])
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "timeout"
        assert _stored(base) == before, "a write whose body never fully arrived was stored"


@pytest.mark.postgres
def test_read_past_the_deadline_is_503(postgres_settings: Settings, tmp_path: Path) -> None:
    env = DEADLINE | {
        "EHR_DATABASE_URL": str(postgres_settings.database_url),
        "EHR_POSTGRES_SCHEMA": postgres_settings.postgres_schema,
    }
    with running_server(tmp_path / "ehr-data", env) as (base, _log), httpx.Client(timeout=30) as http:
        created = http.post(
            f"{base}/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "peso"}}
        )
        assert created.status_code == 201, created.text
        url = f"{base}/Observation/{created.json()['id']}"
        with psycopg.connect(postgres_settings.postgres_conninfo()) as blocker:
            schema = postgres_settings.postgres_schema
            blocker.execute(f'LOCK TABLE "{schema}".resources IN ACCESS EXCLUSIVE MODE')  # held until commit
            started = time.monotonic()
            stuck = http.get(url)
            waited = time.monotonic() - started
            blocker.rollback()
        assert stuck.status_code == 503, stuck.text
        assert stuck.json()["issue"][0]["code"] == "timeout" and stuck.headers["retry-after"] == "1"
        # Without the deadline the read would wait out the 60 s statement timeout; a loaded machine may add
        # seconds to the 1 s deadline, so the bound only tells the two apart.
        assert waited < 30, f"the deadline of 1 s answered after {waited:.1f} s"
        assert http.get(url).status_code == 200, "the server did not answer normally once the lock was gone"
