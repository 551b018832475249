"""The institutions' event stores of a federation, and which one holds a resource.

Each institution writes to its own PostgreSQL store (``EHR_STORES``); a server writes to its own
institution's (``EHR_STORE``). A resource lives in the store where it was first written — its *home* — and
every later version goes there too, so each resource keeps one stream with one version sequence whatever
server a change arrives at. Finding the home costs one index lookup per store (nothing is decrypted).

A store that does not answer is opened again on the next use: one institution's outage makes only the
requests that need that store fail (503), never another institution's writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError

from ehr_core.application import RecordApplication
from ehr_core.errors import StoreUnavailable
from ehr_core.schema import setup_lock
from ehr_core.settings import Settings

__all__ = ["Federation", "StoreDown", "StoreGuard"]

log = logging.getLogger(__name__)

#: What a store that is down or restarting raises (the eventsourcing library's wrappers, or psycopg's own).
StoreDown = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


class StoreGuard:
    """Fails fast while a store is known to be down, instead of each request waiting out the retries.

    The event store's driver retries a lost connection ten times, each waiting a connection timeout: right for
    a restart of the one database, but during an institution's outage every request to its store would hang
    ~10 timeouts. The first such failure marks the store down; until a probe connects again (tried at most
    once per ``probe_seconds``), its requests get a 503 at once. Other stores are not involved.
    """

    def __init__(self, name: str, conninfo: str, probe_seconds: float = 1.0) -> None:
        self.name, self.conninfo, self.probe_seconds = name, conninfo, probe_seconds
        self.down: str | None = None
        self._probe_at = 0.0
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self.down is not None:
            self._probe()
        try:
            yield
        except StoreDown as error:
            self._mark_down(error)
            raise StoreUnavailable(self._message()) from None

    def alive(self) -> bool:
        """Whether the store answers a connection now (probed at most once per ``probe_seconds``)."""
        with self._lock:
            if time.monotonic() < self._probe_at:
                return self.down is None
        try:
            psycopg.connect(self.conninfo, connect_timeout=1).close()
        except psycopg.Error as error:
            self._mark_down(error)
            return False
        with self._lock:
            self.down = None
            self._probe_at = time.monotonic() + self.probe_seconds
        return True

    def _probe(self) -> None:
        with self._lock:
            if self.down is None:
                return
            if time.monotonic() < self._probe_at:
                raise StoreUnavailable(self._message())
            try:
                psycopg.connect(self.conninfo, connect_timeout=1).close()
            except psycopg.Error as error:
                self._probe_at = time.monotonic() + self.probe_seconds
                self.down = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
                raise StoreUnavailable(self._message()) from None
            log.warning("%s's store answers again", self.name)
            self.down = None

    def _mark_down(self, error: BaseException) -> None:
        with self._lock:
            if self.down is None:
                log.warning("%s's store is not answering: %s", self.name, error)
            self.down = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            self._probe_at = time.monotonic() + self.probe_seconds

    def _message(self) -> str:
        return f"{self.name}'s store is not answering ({self.down}); nothing was applied, retry later"


class Federation:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = list(settings.store_urls())
        self.own = settings.own_store()
        self._applications: dict[str, RecordApplication] = {}
        self._lock = threading.Lock()

    def application(self, name: str) -> RecordApplication:
        """The store's application, opened on first use (StoreUnavailable while it cannot be reached)."""
        with self._lock:
            opened = self._applications.get(name)
            if opened is None:
                try:
                    settings = self.settings.for_store(name)
                    with setup_lock(settings):
                        opened = RecordApplication(settings)
                except StoreDown as error:
                    reason = str(error).strip()[:120]
                    raise StoreUnavailable(
                        f"{name}'s store is not answering ({reason}); nothing was applied, retry later"
                    ) from None
                opened.elsewhere = self.elsewhere(name)
                opened.store = name
                opened.guard = StoreGuard(name, settings.postgres_conninfo())
                self._applications[name] = opened
            return opened

    def opened(self) -> Iterator[tuple[str, RecordApplication]]:
        """The stores opened so far."""
        with self._lock:
            yield from list(self._applications.items())

    def reachable(self, name: str) -> bool:
        """Whether store ``name`` answers now (see StoreGuard.alive)."""
        try:
            guard = self.application(name).guard
        except StoreUnavailable:
            return False
        return guard.alive() if isinstance(guard, StoreGuard) else True

    def home_of(self, resource_type: str, resource_id: str) -> str:
        """The store that holds ``Type/id``; this server's own when none does yet (a create goes there)."""
        return self._held_by(resource_type, resource_id, [self.own, *(n for n in self.names if n != self.own)])

    def elsewhere(self, here: str) -> Callable[[str, str], str | None]:
        """For store ``here``: which other store holds a stream absent from it (see RecordApplication)."""

        def lookup(resource_type: str, resource_id: str) -> str | None:
            others = [name for name in self.names if name != here]
            home = self._held_by(resource_type, resource_id, others, default="")
            return home or None

        return lookup

    def _held_by(self, resource_type: str, resource_id: str, names: list[str], default: str | None = None) -> str:
        unreachable = []
        for name in names:
            try:
                if self.application(name).holds(resource_type, resource_id):
                    return name
            except StoreUnavailable:
                unreachable.append(name)
            except StoreDown:
                unreachable.append(name)
        if unreachable:
            # It may live there: writing it here would start a second stream of the same resource.
            raise StoreUnavailable(
                f"cannot tell whether {resource_type}/{resource_id} is recorded in {', '.join(unreachable)}'s "
                "store, which is not answering; nothing was applied, retry later"
            )
        return self.own if default is None else default

    def close(self) -> None:
        with self._lock:
            for application in self._applications.values():
                application.close()
            self._applications.clear()
