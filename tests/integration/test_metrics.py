"""``GET /metrics``: Prometheus text with request counts, projection positions and lag, RSS."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def _value(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{{{labels}}} not in /metrics"
    return float(match.group(1))


def test_metrics_show_requests_positions_and_lag(client: TestClient) -> None:
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    for _ in range(3):
        assert client.post("/fhir/Observation", json={"resourceType": "Observation", "status": "final",
                                                       "code": {"text": "peso"}}).status_code == 201  # fmt: skip
    text = client.get("/metrics").text
    assert _value(text, "ehr_http_requests_total", 'method="POST",status="201"') >= 3
    head = _value(text, "ehr_log_head", 'log="ehr"')
    assert head >= 3
    # Read-your-writes: every create was projected before it was answered, so nothing lags.
    assert _value(text, "ehr_projection_position", 'projection="resources"') == head
    assert _value(text, "ehr_projection_lag_events", 'projection="resources"') == 0
    assert _value(text, "ehr_projection_events_total", 'projection="resources"') >= 3
    assert "process_resident_memory_bytes" in text
    # No patient data, no token needed: counts only.
    assert "peso" not in text
