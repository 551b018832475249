"""Round trips to PostgreSQL made by the current thread: what a request waits for, whatever the load.

A round trip is each time a connection starts waiting for the server's answer after having sent something
(a result arriving in pieces, or a pipeline's sends that only wait for the socket, count once), as
``bench/round_trips.py`` counts them; only the calling thread's are counted (background writers keep
working beside a test).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.waiting import Wait

__all__ = ["RoundTrips", "counting_round_trips"]


class RoundTrips:
    def __init__(self) -> None:
        self.count = 0


@contextmanager
def counting_round_trips() -> Iterator[RoundTrips]:
    counted = RoundTrips()
    thread = threading.get_ident()
    original = psycopg.Connection.wait

    def counting(gen: Any) -> Any:
        reading = False
        try:
            state = next(gen)
            while True:
                if state == Wait.R and not reading:
                    counted.count += 1
                reading = state == Wait.R
                state = gen.send((yield state))
        except StopIteration as stop:
            return stop.value

    def wait(self: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == thread:
            gen = counting(gen)
        return original(self, gen, *args, **kwargs)

    psycopg.Connection.wait = wait  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        psycopg.Connection.wait = original  # type: ignore[method-assign]
