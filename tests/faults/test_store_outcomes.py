"""The outcome of an append, as the client is told it, on PostgreSQL.

- A create whose COMMIT reached the store but whose answer was lost with the connection used to be
  retried by the event store's driver into the unique key of its own first attempt, and answered 409
  "nothing was stored" although it was stored. Now the store is looked at: our own events there are a
  success; another write's events a conflict; an unreadable store a 503 "may have been applied".
- An append stuck behind the event table's lock answers 503 within the lock timeout (never hangs), and
  the server is writable once the lock is released.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import OperationalError
from fastapi.testclient import TestClient

from ehr_core.application import RecordApplication
from ehr_core.context import WriteContext
from ehr_core.errors import Conflict, StoreUnavailable
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.services import Services

pytestmark = [pytest.mark.postgres]

#: Only a hang reaches this; the lock timeout in these tests is 2 s.
HANG = 25.0


@pytest.fixture
def opened(postgres_settings: Settings) -> Iterator[Services]:
    services = Services.open(postgres_settings.model_copy(update={"postgres_lock_timeout_seconds": 2}))
    yield services
    services.close()


def _observation() -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "peso"}}


def _read_back(application: RecordApplication, resource_id: str) -> int:
    stream = application.stream("Observation", resource_id)
    assert stream is not None
    return stream.version


def test_retried_create_after_connection_loss_is_not_409(opened: Services) -> None:
    application = opened.application
    pending = application.prepare_create(_observation(), WriteContext())
    assert pending.stream is not None
    # The first attempt commits; its answer is lost. The retry appends the very same events again.
    first = application._append(list(pending.stream.pending_events))
    written = application.commit([pending])[0]
    assert written.notification_id == first[0].notification.id
    assert _read_back(application, written.resource_id) == 1


def test_lost_connection_after_commit_is_answered_as_stored(opened: Services, monkeypatch: Any) -> None:
    application = opened.application
    pending = application.prepare_create(_observation(), WriteContext())

    def committed_then_lost(events: list[Any]) -> list[Any]:
        application._append(events)  # the COMMIT reached the store...
        raise OperationalError("server closed the connection unexpectedly")  # ...its answer did not come back

    monkeypatch.setattr(application._group, "append", committed_then_lost)
    written = application.commit([pending])[0]
    assert written.notification_id is not None
    assert _read_back(application, written.resource_id) == 1


def test_lost_connection_before_commit_is_appended_again(opened: Services, monkeypatch: Any) -> None:
    application = opened.application
    pending = application.prepare_create(_observation(), WriteContext())
    monkeypatch.setattr(
        application._group, "append", lambda events: (_ for _ in ()).throw(OperationalError("connection lost"))
    )
    written = application.commit([pending])[0]  # nothing was stored: appended again, once
    assert _read_back(application, written.resource_id) == 1


def test_unknown_outcome_is_503_may_have_been_applied(opened: Services, monkeypatch: Any) -> None:
    application = opened.application
    pending = application.prepare_create(_observation(), WriteContext())
    lost = OperationalError("connection lost")
    monkeypatch.setattr(application._group, "append", lambda events: (_ for _ in ()).throw(lost))
    monkeypatch.setattr(application.recorder, "notification_id_of", lambda *key: (_ for _ in ()).throw(lost))
    monkeypatch.setattr(application.events, "get", lambda *a, **k: (_ for _ in ()).throw(lost))
    with pytest.raises(StoreUnavailable, match="may have been applied"):
        application.commit([pending])


def test_another_writers_version_is_still_a_conflict(opened: Services) -> None:
    application = opened.application
    created = application.create(_observation(), WriteContext())
    ours = application.prepare_update("Observation", created.resource_id, _observation() | {
        "id": created.resource_id, "status": "amended"}, WriteContext())  # fmt: skip
    theirs = application.prepare_update("Observation", created.resource_id, _observation() | {
        "id": created.resource_id, "status": "corrected"}, WriteContext())  # fmt: skip
    application.commit([theirs])
    with pytest.raises(Conflict, match="nothing was stored"):
        application.commit([ours])


def test_stuck_append_answers_503_within_timeout(opened: Services) -> None:
    settings = opened.settings
    with TestClient(create_app(services=opened)) as client:
        assert client.post("/fhir/Observation", json=_observation()).status_code == 201
        with psycopg.connect(settings.postgres_conninfo()) as blocker:
            blocker.execute(f'LOCK TABLE "{settings.postgres_schema}".ehr_events IN ACCESS EXCLUSIVE MODE')
            started = time.monotonic()
            stuck = client.post("/fhir/Observation", json=_observation())
            waited = time.monotonic() - started
            blocker.rollback()
        assert stuck.status_code == 503, stuck.text
        assert stuck.json()["resourceType"] == "OperationOutcome"
        assert waited < HANG, f"a stuck append answered after {waited:.0f} s"
        assert client.post("/fhir/Observation", json=_observation()).status_code == 201
