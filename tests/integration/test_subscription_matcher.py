"""Subscription matching is off the write's path (DESIGN.md "Notifications": never on the write's critical
path): a create waits for the views it reads back, not for the matcher, and a matcher held up in the middle
of a batch loses nothing once it goes on (exactly once, numbered in log order)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.context import WriteContext
from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.subscriptions import SubscriptionMatcher, SubscriptionOutbox, events_between
from tests.support.waiting import wait_until

CODE = "http://loinc.org|718-7"
#: A loopback port nothing listens on: the handshake fails, the subscription stays ``requested`` (matched).
UNREACHABLE = "http://127.0.0.1:9/hook"
#: How long the test waits for a condition that holds at once when matching is off the write's path.
GUARD_SECONDS = 20


def _observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
    }


def test_a_stalled_matcher_does_not_delay_a_write_or_its_read_back(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    stalled, release = threading.Event(), threading.Event()
    criteria_matched = SubscriptionOutbox._matching_events

    def stalling(*args: Any) -> set[int]:
        # The matcher in the middle of a batch (its criteria decided), held until the test lets it go on.
        stalled.set()
        release.wait(GUARD_SECONDS * 3)
        return criteria_matched(*args)

    monkeypatch.setattr(SubscriptionOutbox, "_matching_events", staticmethod(stalling))
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "matched while a write goes on",
        "criteria": f"Observation?code={CODE}",
        "channel": {"type": "rest-hook", "endpoint": UNREACHABLE},
    }
    created = client.post("/fhir/Subscription", json=subscription)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    first = client.post("/fhir/Observation", json=_observation())
    assert first.status_code == 201, first.text
    answers: list[int] = []
    done = threading.Event()

    def write_and_read_back() -> None:
        second = client.post("/fhir/Observation", json=_observation())
        answers.append(second.status_code)
        answers.append(client.get(f"/fhir/Observation/{second.json()['id']}").status_code)
        done.set()

    try:
        assert stalled.wait(GUARD_SECONDS), "the matcher never matched the first Observation"
        threading.Thread(target=write_and_read_back, daemon=True).start()
        # While the matcher is still held: the write is answered and readable.
        finished = done.wait(GUARD_SECONDS)
        assert not release.is_set()
    finally:
        release.set()
    assert finished, "a write waited for the stalled subscription matcher"
    assert answers == [201, 200]
    # Once the matcher goes on, both Observations are matched, once each, in log order.
    observations = [first.json()["id"]]

    def matched() -> list[str] | None:
        with services.views.read_primary() as tx:
            found = events_between(tx, sid, 1, None)
        return [o.focus_id for o in found] if len(found) >= 2 else None

    focused = wait_until(matched, "both Observations matched after the matcher went on")
    assert len(focused) == 2
    assert focused[0] == observations[0]
    with services.views.read_primary() as tx:
        assert [o.event_number for o in events_between(tx, sid, 1, None)] == [1, 2]


def test_a_paced_turn_matches_in_smaller_batches(settings: Settings) -> None:
    """While writes commit, the delivery thread asks the matcher for small batches (``catch_up_within``'s
    ``batch_size``): on SQLite a batch's outbox rows are written under the views' one writer lock, which the
    projection of the next write waits for."""
    opened = Services.open(settings, follow=False)  # no delivery thread: this test alone moves the matcher
    try:
        context = WriteContext(institution="imss", user="test", purpose="TREAT")
        for _ in range(5):
            opened.application.create(_observation(), context)
        opened.projector.catch_up()
        matcher = opened.main_projectors["subscriptions"]
        assert isinstance(matcher, SubscriptionMatcher)
        assert matcher.catch_up_within(0, batch_size=2) == 2  # one turn that has run out: one batch
        assert matcher.catch_up_within(GUARD_SECONDS) >= 3  # the rest, in the usual batches
    finally:
        opened.close()


def _subscription(status: str = "requested") -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": status,
        "reason": "matched by the test",
        "criteria": f"Observation?code={CODE}",
        "channel": {"type": "rest-hook", "endpoint": UNREACHABLE},
    }


def test_with_nothing_to_match_no_event_is_decoded(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store without subscriptions (most of them) pays no decryption and decoding of every write for the
    matcher; a Subscription written in the same batch as the writes after it still has them matched."""
    opened = Services.open(settings, follow=False)
    try:
        context = WriteContext(institution="imss", user="test", purpose="TREAT")
        matcher = opened.main_projectors["subscriptions"]
        assert isinstance(matcher, SubscriptionMatcher)
        mapper = opened.application.mapper
        decoded: list[int] = []
        decode = mapper.to_domain_event

        def counted(notification: Any) -> Any:
            decoded.append(notification.id)
            return decode(notification)

        for _ in range(5):
            opened.application.create(_observation(), context)
        opened.projector.catch_up()
        monkeypatch.setattr(mapper, "to_domain_event", counted)
        assert matcher.catch_up_within(GUARD_SECONDS) == 5
        assert decoded == []  # nothing matched: nothing decoded
        off = opened.application.create(_subscription(status="off"), context)  # a row, but never matched
        opened.projector.catch_up()
        decoded.clear()  # the resource views' own decoding: only the matcher's is counted
        assert matcher.catch_up_within(GUARD_SECONDS) == 1
        assert decoded == [off.notification_id]  # a Subscription changed: that batch is decoded
        opened.application.create(_observation(), context)
        opened.projector.catch_up()
        decoded.clear()  # the resource views' own decoding: only the matcher's is counted
        assert matcher.catch_up_within(GUARD_SECONDS) == 1
        assert decoded == []
        subscription = opened.application.create(_subscription(), context)
        observations = [opened.application.create(_observation(), context).resource_id for _ in range(3)]
        opened.projector.catch_up()
        decoded.clear()  # the resource views' own decoding: only the matcher's is counted
        assert matcher.catch_up_within(GUARD_SECONDS) == 4  # the Subscription and three writes, one batch
        with opened.views.read() as tx:
            matched = events_between(tx, subscription.resource_id, 1, None)
        assert [(event.event_number, event.focus_id) for event in matched] == list(enumerate(observations, 1))
    finally:
        opened.close()
