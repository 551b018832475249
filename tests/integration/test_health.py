"""``GET /health`` and ``ehr_store_writable``: whether the audit log can be written, and when it recovered."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_api.services import Services


def _audit(client: TestClient, status: int) -> dict[str, Any]:
    response = client.get("/health")
    assert response.status_code == status, response.text
    state: dict[str, Any] = response.json()["stores"]["audit"]
    return state


def _gauge(client: TestClient) -> str:
    text: str = client.get("/metrics").text
    return next(line for line in text.splitlines() if line.startswith("ehr_store_writable{"))


def test_health_follows_the_audit_log(client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    assert services.compliance is not None
    writer = services.compliance.audit_writer
    assert _audit(client, 200)["writable"] is True
    assert _gauge(client) == 'ehr_store_writable{store="audit"} 1.0'

    def no_room(entries: object) -> int:
        raise OSError(27, "File too large")

    monkeypatch.setattr(writer.log, "append", no_room)
    assert client.get("/fhir/metadata").status_code == 200  # answered; its audit entry cannot be stored
    with pytest.raises(OSError):
        writer.flush()
    down = _audit(client, 503)
    assert down["writable"] is False and down["unwritableSince"] is not None
    assert _gauge(client) == 'ehr_store_writable{store="audit"} 0.0'
    assert client.get("/fhir/metadata").status_code == 503  # no access while it cannot be audited

    monkeypatch.undo()  # room again
    monkeypatch.setattr(writer, "probe_seconds", 0.0)  # the next request is the probe
    assert client.get("/fhir/metadata").status_code == 200
    writer.flush()
    up = _audit(client, 200)
    assert up["writable"] is True and up["unwritableSince"] is None
    assert up["lastProbe"] is not None and up["lastCommit"] >= up["lastProbe"]
    assert _gauge(client) == 'ehr_store_writable{store="audit"} 1.0'
