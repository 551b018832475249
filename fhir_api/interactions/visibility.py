"""Read-your-writes after an append that committed, without ever calling a stored write a failure.

Once the event store has committed a write, it is part of the record: answering 503 "nothing was applied"
because the *views* could not be reached for a moment (PostgreSQL restarting, SQLite out of space) would
be false, and a client that retries would store its resource twice (found by tests/faults: a create
answered 503 during a restart was in the log). So making the write visible is retried until the request's
deadline (``EHR_REQUEST_TIMEOUT_SECONDS``, fhir_api/limits.py); if the views are still unreachable then,
the write is acknowledged anyway and the projector applies it when the database is back (the log follower
on PostgreSQL, the next catch-up on SQLite). Only read-your-writes is given up, and only then.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

import psycopg
from eventsourcing import persistence

from ehr_core.application import Written
from fhir_api.limits import deadline_or
from fhir_api.services import Services

__all__ = ["after_commit", "make_visible"]

log = logging.getLogger(__name__)

#: Failures of the connection, not of the statement: worth waiting out.
UNAVAILABLE = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    persistence.OperationalError,
    persistence.InterfaceError,
    sqlite3.OperationalError,
    psycopg.errors.ReadOnlySqlTransaction,  # the views' database turned read-only: wait for it too
)
RETRY_PAUSE = 0.25


def _unavailable(error: Exception) -> bool:
    # The identity index appends events of its own (Person, Membership) while catching up: the event store
    # wraps a read-only refusal of those in its InternalError.
    if isinstance(error, persistence.InternalError):
        return isinstance(error.__cause__, psycopg.errors.ReadOnlySqlTransaction)
    return True


def after_commit(catch_up: Callable[[], object], what: str) -> None:
    """Run ``catch_up`` (blocking, in a worker thread) until it succeeds or the request runs out of time."""
    deadline = deadline_or(default_seconds=10.0)
    while True:
        try:
            catch_up()
            return
        except (*UNAVAILABLE, persistence.InternalError) as error:
            if not _unavailable(error):
                raise
            if time.monotonic() + RETRY_PAUSE > deadline:
                log.warning("%s is stored but not yet visible (views unreachable: %s); acknowledged", what, error)
                return
            time.sleep(RETRY_PAUSE)


def make_visible(services: Services, written: Written | None) -> None:
    """:meth:`Services.wait_until_visible` for one committed write, waiting out a database that is briefly away."""
    if written is None:
        return
    after_commit(lambda: services.wait_until_visible(written), f"{written.resource_type}/{written.resource_id}")
