"""An event a projection cannot apply is quarantined, never a block on the log behind it.

Before, a batch that failed on one event failed for ever: every later write waited out the projection
deadline and a restarted server could not start (the event is in the log). Now the batch is applied event
by event, the failing event is recorded in ``quarantined_events`` and skipped, ``/metrics`` counts it,
``ehr verify`` reports it, and ``ehr project --retry-quarantined`` applies it once the cause is fixed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.context import WriteContext
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.services import Services
from projections.changes import Change
from projections.search.index import SearchIndex

POISON = "no-view-can-hold-this"


def _observation(text: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": text}}


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The search index fails on any batch holding the poison (as PostgreSQL failed on an oversized row)."""
    apply = SearchIndex.apply

    def failing(self: SearchIndex, tx: Any, changes: Sequence[Change]) -> None:
        if any(change.body is not None and POISON.encode() in change.body for change in changes):
            raise ValueError("this resource cannot be indexed")
        apply(self, tx, changes)

    monkeypatch.setattr(SearchIndex, "apply", failing)
    return monkeypatch


def _ehr(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"EHR_DATA_DIR": str(settings.data_dir), "EHR_AUTH": settings.auth, "PATH": "/usr/bin:/bin"}
    if settings.uses_postgres:
        env |= {"EHR_DATABASE_URL": str(settings.database_url), "EHR_POSTGRES_SCHEMA": settings.postgres_schema}
    command = [sys.executable, "-c", "import sys; from fhir_api.cli import main; sys.exit(main())", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def _quarantined_metric(client: TestClient) -> float:
    text = client.get("/metrics").text
    match = re.search(r'^ehr_projection_quarantined_events\{projection="resources"\} (\S+)$', text, re.MULTILINE)
    assert match is not None, "no quarantine count in /metrics"
    return float(match.group(1))


def test_failing_event_is_quarantined_and_retried_after_a_fix(settings: Settings, poisoned: Any) -> None:
    services = Services.open(settings)
    try:
        application = services.application
        # Three events in one batch: the batch fails, is applied event by event, only the poison is skipped.
        before, poison, after = (application.create(_observation(t), WriteContext()) for t in ("a", POISON, "b"))
        services.projector.catch_up()
        assert [n for n, _ in services.projector.quarantined()] == [poison.notification_id]
        with TestClient(create_app(services=services)) as client:
            assert client.get(f"/fhir/Observation/{before.resource_id}").status_code == 200
            assert client.get(f"/fhir/Observation/{after.resource_id}").status_code == 200
            # Later writes, poisoned or not, are answered and the good ones visible.
            assert client.post("/fhir/Observation", json=_observation(POISON)).status_code == 201
            assert client.post("/fhir/Observation", json=_observation("c")).status_code == 201
            assert client.get("/fhir/Observation", params={"code:text": "c"}).json()["total"] == 1
            assert _quarantined_metric(client) == 2
    finally:
        services.close()
    # A restart starts (nothing left to apply that blocks it).
    Services.open(settings).close()
    report = _ehr(settings, "verify")
    assert report.returncode == 1, report.stdout + report.stderr
    assert "quarantined" in report.stdout

    poisoned.undo()  # the fix
    services = Services.open(settings)
    try:
        assert services.projector.retry_quarantined() == (2, 0)
        assert services.projector.quarantined() == []
        with TestClient(create_app(services=services)) as client:
            assert client.get(f"/fhir/Observation/{poison.resource_id}").status_code == 200
            assert client.get("/fhir/Observation", params={"code:text": POISON}).json()["total"] == 2
            assert _quarantined_metric(client) == 0
    finally:
        services.close()
    assert _ehr(settings, "verify").returncode == 0


def test_retry_quarantined_command_applies_them_once_fixed(settings: Settings, poisoned: Any) -> None:
    services = Services.open(settings)
    try:
        services.application.create(_observation(POISON), WriteContext())
        services.projector.catch_up()
        assert len(services.projector.quarantined()) == 1
        # The subprocess has no poison: for it the cause is fixed.
        retried = _ehr(settings, "project", "--retry-quarantined")
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert services.projector.quarantined() == []
    finally:
        services.close()
