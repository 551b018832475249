"""The PostgreSQL append (ehr_core/pgstore.py): a small one is one pipeline (BEGIN, the ordering lock, the
notify, the insert and COMMIT answered together); a large one sends BEGIN, the lock and the notify as one
query, then the insert, then COMMIT. What both must keep: an append is atomic (one event refused, none
stored), a refused append leaves its pooled connection out of any transaction (the next append works and
holds no stale lock), and notification ids follow commit order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from ehr_core.application import RecordApplication
from ehr_core.pgstore import PIPELINED_UP_TO
from ehr_core.schema import setup_lock
from ehr_core.settings import Settings
from tests.support.round_trips import counting_round_trips

pytestmark = pytest.mark.postgres


@pytest.fixture
def recorder(postgres_settings: Settings, tmp_path: Path) -> Iterator[object]:
    settings = postgres_settings.model_copy(update={"data_dir": tmp_path / "ehr-data"})
    with setup_lock(settings):  # creates the test's schema
        application = RecordApplication(settings)
    try:
        yield application.recorder
    finally:
        application.close()


def _event(originator: object, version: int = 1, state: bytes = b"{}") -> StoredEvent:
    return StoredEvent(originator_id=originator, originator_version=version, topic="t:Recorded", state=state)


#: A state that makes an append too large for the pipeline (the three round trips' path).
LARGE = b"x" * (PIPELINED_UP_TO + 1)


@pytest.mark.parametrize("refused_state", [b"{}", LARGE], ids=["small", "large"])
def test_an_append_is_atomic_and_a_refused_one_leaves_no_transaction(recorder: object, refused_state: bytes) -> None:
    first, second, third = uuid4(), uuid4(), uuid4()
    ids = recorder.insert_events([_event(first)])  # type: ignore[attr-defined]
    assert ids is not None and len(ids) == 1

    # Its second event repeats a stored (originator, version): the whole append is refused.
    with pytest.raises(IntegrityError):
        recorder.insert_events([_event(second, state=refused_state), _event(first)])  # type: ignore[attr-defined]
    assert recorder.select_events(second) == []  # type: ignore[attr-defined]

    # Every pooled connection is usable again and none holds the table lock: appends go on, in order.
    later = [recorder.insert_events([_event(third, version)]) for version in (1, 2, 3)]  # type: ignore[attr-defined]
    numbers = [ids_[0] for ids_ in later if ids_]
    assert len(numbers) == 3 and numbers == sorted(numbers) and numbers[0] > ids[0]
    stored = recorder.select_notifications(start=ids[0], limit=10)  # type: ignore[attr-defined]
    assert [n.originator_id for n in stored] == [first, third, third, third]


def test_an_append_of_several_events_returns_their_notification_ids(recorder: object) -> None:
    events = [_event(uuid4()) for _ in range(5)]
    ids = recorder.insert_events(events)  # type: ignore[attr-defined]
    assert ids is not None and len(ids) == 5 and ids == sorted(ids)
    stored = recorder.select_notifications(start=ids[0], limit=10)  # type: ignore[attr-defined]
    assert [n.id for n in stored] == ids
    assert [n.originator_id for n in stored] == [e.originator_id for e in events]


def test_an_append_stores_each_events_bytes_as_they_were_given(recorder: object) -> None:
    """The append sends one array per column (binary), not an array of the composite type (text, escaped
    in Python): bytes a text array would have to escape, of every value 0-255, come back unchanged, with
    their versions and topics, in the order appended."""
    awkward = bytes(range(256)) + b'{"a": "\\"}' + b'\x00,()"'
    events = [
        StoredEvent(originator_id=uuid4(), originator_version=version, topic=f't:Recorded "{version}",()', state=state)
        for version, state in ((1, awkward), (7, b""), (2, awkward[::-1]))
    ]
    ids = recorder.insert_events(events)  # type: ignore[attr-defined]
    assert ids is not None and len(ids) == 3 and ids == sorted(ids)
    stored = recorder.select_notifications(start=ids[0], limit=10)  # type: ignore[attr-defined]
    assert [(n.originator_id, n.originator_version, n.topic, bytes(n.state)) for n in stored] == [
        (e.originator_id, e.originator_version, e.topic, e.state) for e in events
    ]


def test_a_small_append_is_one_round_trip_and_a_large_one_is_stored_too(recorder: object) -> None:
    # The event table's ordering lock is held from the LOCK to the COMMIT: sent in one pipeline, it is never
    # held while a message crosses the network, and every writer queues for it.
    with counting_round_trips() as round_trips:
        ids = recorder.insert_events([_event(uuid4()), _event(uuid4())])  # type: ignore[attr-defined]
    assert round_trips.count == 1
    large = _event(uuid4(), state=LARGE)
    later = recorder.insert_events([large])  # type: ignore[attr-defined]
    assert ids is not None and later is not None and len(ids) == 2 and later[0] > ids[1]
    stored = recorder.select_notifications(start=later[0], limit=1)  # type: ignore[attr-defined]
    assert stored[0].originator_id == large.originator_id and bytes(stored[0].state) == LARGE
