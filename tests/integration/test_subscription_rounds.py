"""A delivery round's due events: every subscription gets its turn, each in event-number order."""

from __future__ import annotations

import time

from ehr_core.context import WriteContext
from fhir_api.delivery_pacing import DeliveryPacing
from fhir_api.services import Services
from projections.subscriptions import due_events

SUBSCRIPTIONS = 50
BACKLOG = 60  # each subscription has more undelivered events than a round takes from it


def test_a_round_serves_every_subscription_in_order_whatever_their_backlog(services: Services) -> None:
    ids = [f"sub-{n:02d}" for n in range(SUBSCRIPTIONS)]
    # One stream of matched events the fifty subscriptions all follow from its first seq, each with its
    # first event delivered (projections/subscription_streams.py).
    with services.views.write() as tx:
        tx.executemany(
            "INSERT INTO subscription_matches (stream, seq, notification_id, focus_type, focus_id, focus_version, "
            "recorded) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [("shared", n, n, "Observation", f"obs-{n}", 1, "2026-01-01T00:00:00Z") for n in range(1, BACKLOG + 1)],
        )
        tx.execute("INSERT INTO subscription_streams (stream, head) VALUES ('shared', ?)", (BACKLOG,))
        tx.executemany(
            "INSERT INTO subscriptions (id, institution, resource_type, params, status, version, resource, "
            "stream, first_seq, delivered) VALUES (?, 'imss', 'Observation', '[]', 'off', 1, '{}', 'shared', 1, 1)",
            [(sid,) for sid in ids],
        )
    limit = 2000
    with services.views.read_primary() as tx:
        due = due_events(tx, time.time(), ids, per_subscription=50, limit=limit)
    by_subscription: dict[str, list[int]] = {}
    for outbound in due:
        by_subscription.setdefault(outbound.subscription_id, []).append(outbound.event_number)
    assert sorted(by_subscription) == ids
    assert len(due) <= limit
    for numbers in by_subscription.values():
        # The lowest undelivered events, in order (number 1 was delivered): a gap would break the order.
        assert numbers == list(range(2, 2 + len(numbers)))


def test_a_write_reaching_the_views_paces_delivery(services: Services) -> None:
    """Delivery learns of writes from the resource views' commits (``Projector.on_applied``), which is what
    limits its share of the CPU while they go on (``fhir_api/delivery_pacing.py``)."""
    deliverer = services.deliverer
    assert deliverer is not None  # this process projects: it delivers
    frozen = 1000.0
    deliverer.pacing = DeliveryPacing(share=0.1, clock=lambda: frozen)
    assert not deliverer.pacing.writing()
    context = WriteContext(institution="imss", user="test", purpose="TREAT")
    written = services.application.create({"resourceType": "Patient", "name": [{"family": "Paced"}]}, context)
    services.wait_until_visible(written)
    assert deliverer.pacing.writing()
    deliverer.pacing.spent(0.05)
    assert deliverer.pacing.rest(frozen) > 0  # a round's CPU during writes is followed by a rest
