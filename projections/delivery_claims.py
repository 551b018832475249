"""Which process delivers a subscription: one at a time, so its events go once each and in order.

Several ``ehr serve`` processes (and an ``ehr project`` worker) on one PostgreSQL database each run a
delivery thread over the same outbox. Each subscription is claimed with a PostgreSQL session advisory lock
(``pg_try_advisory_lock``) on a connection the claims keep to themselves: the process holding it is the
only one that handshakes, heartbeats and delivers that subscription, reading its outbox only after the claim
is taken (so it starts after the last event the previous holder marked delivered). The lock lives as long
as the connection: a process that dies or loses its connection frees its subscriptions at once for another
(an event it had in flight and not yet marked is sent again: at least once, with the same event number).
A lease with an expiry would instead need renewing within the longest send, or hand a slow subscription to
a second process while the first still sends.

SQLite has one process (``ehr serve`` refuses ``--workers`` there): it holds every claim.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

import psycopg

__all__ = ["AdvisoryClaims", "DeliveryClaims", "SoleProcess"]

log = logging.getLogger(__name__)


class DeliveryClaims(Protocol):
    def claim(self, wanted: Iterable[str]) -> set[str]:
        """Of the subscriptions ``wanted``, those this process delivers now (those no longer wanted are freed)."""
        ...

    def close(self) -> None: ...


class SoleProcess:
    """The only process on its database: every subscription is its own."""

    def claim(self, wanted: Iterable[str]) -> set[str]:
        return set(wanted)

    def close(self) -> None:
        pass


class AdvisoryClaims:
    """Session advisory locks on a PostgreSQL connection of their own, one per subscription of ``schema``."""

    def __init__(self, conninfo: str, schema: str) -> None:
        self.conninfo = conninfo
        #: Advisory locks are per database, not per schema: the schema is the lock's first key.
        self.namespace = f"ehr-core subscription delivery {schema}"
        self._connection: Any = None
        self._held: set[str] = set()

    def claim(self, wanted: Iterable[str]) -> set[str]:
        wanted = set(wanted)
        try:
            if self._connection is None or self._connection.closed:
                self._held = set()  # a lost connection took its locks with it
                self._connection = psycopg.connect(self.conninfo, autocommit=True)
            freed = sorted(self._held - wanted)
            if freed:
                self._locks("pg_advisory_unlock", freed)
                self._held -= set(freed)
            missing = sorted(wanted - self._held)
            if missing:  # one round trip for all: a process holding none still asks every poll
                self._held |= self._locks("pg_try_advisory_lock", missing)
        except psycopg.Error:
            self.close()  # deliver nothing until the claims are known again
            raise
        return set(self._held)

    def _locks(self, function: str, subscriptions: list[str]) -> set[str]:
        """Call ``function`` (take or free) for each subscription; those for which it answered true."""
        rows = self._connection.execute(
            f"SELECT s FROM unnest(%s::text[]) AS s WHERE {function}(hashtext(%s), hashtext(s))",
            (subscriptions, self.namespace),
        ).fetchall()
        return {str(row[0]) for row in rows}

    def close(self) -> None:
        self._held = set()
        if self._connection is not None:
            try:
                self._connection.close()
            except psycopg.Error:
                log.debug("closing the delivery claims' connection failed", exc_info=True)
            self._connection = None
