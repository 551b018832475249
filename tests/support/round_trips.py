"""Round trips to PostgreSQL made by the current thread: what a request waits for, whatever the load.

A round trip is each time a connection starts waiting for the server's answer after having sent something
(a result arriving in pieces, or a pipeline's sends that only wait for the socket, count once), counted by
``bench/round_trips.py``'s own :func:`count_waits`; only the calling thread's are counted (background writers
keep working beside a test).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from bench.round_trips import count_waits

__all__ = ["RoundTrips", "counting_round_trips"]


class RoundTrips:
    def __init__(self) -> None:
        self.count = 0

    def add(self) -> None:
        self.count += 1


@contextmanager
def counting_round_trips() -> Iterator[RoundTrips]:
    counted = RoundTrips()
    thread = threading.get_ident()
    original = psycopg.Connection.wait

    def wait(self: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == thread:
            gen = count_waits(gen, counted.add)
        return original(self, gen, *args, **kwargs)

    psycopg.Connection.wait = wait  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        psycopg.Connection.wait = original  # type: ignore[method-assign]
