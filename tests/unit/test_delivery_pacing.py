"""Delivery's share of the CPU while writes commit (DESIGN.md "Notifications": it never slows writes beyond
the matching cost; it may lag during a burst and catch up after). Clocks are injected: nothing is timed."""

from __future__ import annotations

import threading

import pytest

from fhir_api.delivery_pacing import DeliveryPacing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_while_writes_commit_a_round_rests_until_its_cpu_is_within_the_share() -> None:
    clock = Clock()
    pacing = DeliveryPacing(share=0.1, quiet_after=0.5, clock=clock)
    pacing.write_committed()
    began = clock.now
    pacing.spent(0.02)  # the round's own thread
    pacing.spent(0.03)  # a sending thread
    clock.now += 0.1  # the round took 0.1 s
    # 0.05 s of CPU is a tenth of 0.5 s: 0.4 s more of rest.
    assert pacing.rest(began) == pytest.approx(0.4)
    # The report was for that round: the next one starts from nothing.
    assert pacing.rest(clock.now) == 0.0


def test_senders_report_from_their_own_threads() -> None:
    clock = Clock()
    pacing = DeliveryPacing(share=0.5, clock=clock)
    pacing.write_committed()
    senders = [threading.Thread(target=pacing.spent, args=(0.01,)) for _ in range(8)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert pacing.rest(clock.now) == pytest.approx(0.16)


def test_with_no_write_for_a_while_the_backlog_drains_at_full_speed() -> None:
    clock = Clock()
    pacing = DeliveryPacing(share=0.1, quiet_after=0.5, clock=clock)
    pacing.spent(1.0)
    assert not pacing.writing() and pacing.rest(clock.now) == 0.0  # no write yet
    pacing.write_committed()
    clock.now += 0.6
    pacing.spent(1.0)
    assert not pacing.writing() and pacing.rest(clock.now) == 0.0


def test_a_round_that_took_long_enough_does_not_rest_and_share_one_never_does() -> None:
    clock = Clock()
    pacing = DeliveryPacing(share=0.1, clock=clock)
    pacing.write_committed()
    began = clock.now
    pacing.spent(0.01)
    clock.now += 0.2  # waited on endpoints or the interpreter lock: that is not CPU taken from writes
    assert pacing.rest(began) == 0.0
    unpaced = DeliveryPacing(share=1.0, clock=clock)
    unpaced.write_committed()
    unpaced.spent(5.0)
    assert unpaced.rest(clock.now) == 0.0
