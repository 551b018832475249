"""The subscriptions' outbox keeps a matched event once per criteria, not once per subscription
(``projections/subscription_streams.py``): fifty subscriptions matching a write cost one outbox row, and each
still gets every event once, in event-number order (the backport IG's ``eventNumber``), across a restart and
a change of its criteria; an outbox of one row per subscription and event is migrated on open."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ehr_core.context import WriteContext
from ehr_core.settings import Settings
from fhir_api.services import Services
from projections import db
from projections.subscriptions import (
    SubscriptionMatcher,
    SubscriptionOutbox,
    due_events,
    events_between,
    mark_delivered,
    mark_failed,
    subscription_row,
)

CRITERIA = "Observation?code=http://loinc.org|718-7"
#: A loopback port nothing listens on: the subscriptions stay ``requested`` (matched, never sent to).
UNREACHABLE = "http://127.0.0.1:9/hook"
IMSS = WriteContext(institution="imss", user="test", purpose="TREAT")


def _observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
    }


def _subscription(criteria: str = CRITERIA) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "streams",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": UNREACHABLE},
    }


def _match(opened: Services) -> None:
    opened.projector.catch_up()
    matcher = opened.main_projectors["subscriptions"]
    assert isinstance(matcher, SubscriptionMatcher)
    matcher.catch_up_within(60)


def test_fifty_subscriptions_of_one_criteria_write_one_outbox_row_per_matched_event(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = Services.open(settings, follow=False)  # no delivery thread: this test alone moves the matcher
    try:
        sids = [opened.application.create(_subscription(), IMSS).resource_id for _ in range(50)]
        _match(opened)
        observations = [opened.application.create(_observation(), IMSS).resource_id for _ in range(3)]
        opened.projector.catch_up()

        # Rows the matcher hands to the outbox tables (any table of the subscriptions but their own rows).
        rows: dict[str, int] = {}
        for tx_class in (db._SQLiteTx, db._PostgresTx):
            for method in ("insert", "upsert", "executemany"):
                original = getattr(tx_class, method)

                def counted(self: Any, target: str, *args: Any, _original: Any = original, _m: str = method) -> Any:
                    written = args[-1]
                    name = target if _m != "executemany" else target.split()[1] + " " + target.split()[2]
                    rows[name] = rows.get(name, 0) + len(written)
                    return _original(self, target, *args)

                monkeypatch.setattr(tx_class, method, counted)
        _match(opened)
        monkeypatch.undo()

        outbox = {name: count for name, count in rows.items() if name.startswith("subscription_")}
        assert outbox == {"subscription_matches": 3, "subscription_streams": 1}  # one row per matched event
        assert not [name for name in rows if "subscriptions" in name]  # no row per subscription either
        with opened.views.read_primary() as tx:
            for sid in sids:
                found = events_between(tx, sid, 1, None)
                assert [(o.event_number, o.focus_id) for o in found] == list(enumerate(observations, start=1))
                row = subscription_row(tx, sid)
                assert row is not None and row.events == 3
    finally:
        opened.close()


def test_each_subscription_gets_every_event_once_in_order_across_a_restart_and_a_criteria_change(
    settings: Settings,
) -> None:
    first = Services.open(settings, follow=False)
    try:
        delivered, retried = (first.application.create(_subscription(), IMSS).resource_id for _ in range(2))
        observations = [first.application.create(_observation(), IMSS).resource_id for _ in range(2)]
        _match(first)
        with first.views.write() as tx:
            mark_delivered(tx, [(delivered, 1)])
            assert mark_failed(tx, retried, 1, time.time() - 1, "refused") == 1
    finally:
        first.close()

    second = Services.open(settings, follow=False)  # a restart: the matcher reads its subscriptions again
    try:
        later = second.application.create(_subscription(), IMSS).resource_id
        # Other criteria matching the same events: the subscription follows another stream, numbered on.
        changed = _subscription("Observation?code=718-7")
        second.application.update("Subscription", retried, changed | {"id": retried}, IMSS)
        observations += [second.application.create(_observation(), IMSS).resource_id for _ in range(2)]
        _match(second)
        with second.views.read_primary() as tx:
            due = due_events(tx, time.time(), [delivered, retried, later])
            rows = {sid: subscription_row(tx, sid) for sid in (delivered, retried, later)}
            history = events_between(tx, retried, 1, None)
        by_subscription: dict[str, list[tuple[int, str, int]]] = {}
        for outbound in due:
            by_subscription.setdefault(outbound.subscription_id, []).append(
                (outbound.event_number, outbound.focus_id, outbound.attempts)
            )
        assert by_subscription == {
            delivered: [(2, observations[1], 0), (3, observations[2], 0), (4, observations[3], 0)],
            retried: [(1, observations[0], 1), *[(n + 1, observations[n], 0) for n in (1, 2, 3)]],
            later: [(1, observations[2], 0), (2, observations[3], 0)],
        }
        assert {sid: row.events for sid, row in rows.items() if row is not None} == {delivered: 4, retried: 4, later: 2}
        assert [o.event_number for o in history] == [1, 2, 3, 4]
        with second.views.write() as tx:
            mark_delivered(tx, [(o.subscription_id, o.event_number) for o in due])
        with second.views.read_primary() as tx:
            assert due_events(tx, time.time(), [delivered, retried, later]) == []
            assert [o.delivered for o in events_between(tx, retried, 1, None)] == [True] * 4
    finally:
        second.close()


def test_an_outbox_of_one_row_per_subscription_and_event_is_migrated_on_open(settings: Settings) -> None:
    opened = Services.open(settings, follow=False)
    try:
        sid = opened.application.create(_subscription(), IMSS).resource_id
        _match(opened)
        with opened.views.write() as tx:
            # The store as the previous outbox left it: one row per event of the subscription, the first
            # delivered, the second failed twice.
            for table in ("subscription_matches", "subscription_segments", "subscription_streams"):
                tx.execute(f"DROP TABLE {table}")
            tx.execute("UPDATE subscriptions SET events = 3, stream = NULL, first_seq = 0")
            tx.execute(
                "CREATE TABLE subscription_outbox (subscription_id TEXT NOT NULL, event_number BIGINT NOT NULL, "
                "notification_id BIGINT NOT NULL, focus_type TEXT NOT NULL, focus_id TEXT NOT NULL, "
                "focus_version BIGINT NOT NULL, recorded TEXT NOT NULL, delivered INTEGER NOT NULL DEFAULT 0, "
                "attempts INTEGER NOT NULL DEFAULT 0, next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0, error TEXT, "
                "context TEXT, PRIMARY KEY (subscription_id, event_number))"
            )
            tx.executemany(
                "INSERT INTO subscription_outbox (subscription_id, event_number, notification_id, focus_type, "
                "focus_id, focus_version, recorded, delivered, attempts) VALUES (?, ?, ?, ?, ?, 1, '2026', ?, ?)",
                [(sid, n, 100 + n, "Observation", f"obs-{n}", int(n == 1), 2 if n == 2 else 0) for n in (1, 2, 3)],
            )
            SubscriptionOutbox().create(tx, opened.views.dialect)
            gone = tx.execute("SELECT COUNT(*) FROM subscriptions WHERE stream IS NULL").fetchone()
        assert gone is not None and gone[0] == 0  # it follows its criteria's stream from now on
        written = opened.application.create(_observation(), IMSS).resource_id
        _match(opened)
        with opened.views.read_primary() as tx:
            history = events_between(tx, sid, 1, None)
            due = due_events(tx, time.time(), [sid])
        assert [(o.event_number, o.focus_id, o.delivered) for o in history] == [
            (1, "obs-1", True),
            (2, "obs-2", False),
            (3, "obs-3", False),
            (4, written, False),
        ]
        assert [(o.event_number, o.attempts) for o in due] == [(2, 2), (3, 0), (4, 0)]
    finally:
        opened.close()
