"""How round trips are counted (bench/round_trips.py ``count_waits``), on the waits psycopg's generators make."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from psycopg.waiting import Ready, Wait

from bench.round_trips import count_waits


def _driven(states: list[Wait], readies: list[Ready]) -> int:
    """Drive a generator that asks for ``states`` in turn, answering each with ``readies``; the count."""

    def generator() -> Generator[Wait, Any, str]:
        for state in states:  # noqa: UP028 - a list cannot take what send() passes on
            yield state
        return "done"

    counted: list[int] = []
    wrapped = count_waits(generator(), lambda: counted.append(1))
    state = next(wrapped)
    answers = iter(readies)
    try:
        while True:
            assert state in states
            state = wrapped.send(next(answers))
    except StopIteration as stop:
        assert stop.value == "done"
    return len(counted)


def test_a_statement_waiting_for_its_answer_in_pieces_is_one_round_trip() -> None:
    assert _driven([Wait.W, Wait.R, Wait.R, Wait.R], [Ready.W, Ready.R, Ready.R, Ready.R]) == 1


def test_a_pipeline_whose_answers_came_while_it_sent_is_one_round_trip() -> None:
    """A quick server: every answer arrived during the read-and-write waits, none waited for alone."""
    assert _driven([Wait.RW, Wait.RW, Wait.RW], [Ready.W, Ready.RW, Ready.RW]) == 1


def test_a_pipeline_that_then_waits_for_its_answers_is_one_round_trip() -> None:
    assert _driven([Wait.RW, Wait.RW, Wait.R, Wait.R], [Ready.W, Ready.RW, Ready.R, Ready.R]) == 1


def test_two_exchanges_in_one_wait_are_two_round_trips() -> None:
    assert _driven([Wait.W, Wait.R, Wait.W, Wait.R], [Ready.W, Ready.R, Ready.W, Ready.R]) == 2


def test_sends_that_got_no_answer_are_no_round_trip() -> None:
    assert _driven([Wait.RW, Wait.RW], [Ready.W, Ready.W]) == 0
