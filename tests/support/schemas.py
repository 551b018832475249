"""Dropping a test's PostgreSQL schema when the test ends."""

from __future__ import annotations

import time

import psycopg
from psycopg import errors

__all__ = ["drop_schema"]

#: How long the drop waits for one lock before it lets go of those it holds and tries again.
LOCK_WAIT = "2s"
#: Only something that never lets go of the schema's tables takes this long.
GIVE_UP_SECONDS = 120.0


def drop_schema(conninfo: str, schema: str) -> None:
    """``DROP SCHEMA ... CASCADE``, retried while a lock is not granted in time.

    A server's projection worker may still be finishing a batch when a test ends. The drop locks the schema's
    tables one after the other; the batch may hold one of them (its tracking row) and wait, in the worker's
    Python, for a read of another that the drop already holds. PostgreSQL cannot see that cycle, so the drop
    gives up after a short lock wait instead, releasing what it took, and the batch (and the worker) can end.
    A cycle PostgreSQL does see ends the drop as the deadlock's victim: tried again too.
    """
    deadline = time.monotonic() + GIVE_UP_SECONDS
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f"SET lock_timeout = '{LOCK_WAIT}'")
        while True:
            try:
                connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                return
            except (errors.LockNotAvailable, errors.DeadlockDetected):
                if time.monotonic() >= deadline:
                    raise
