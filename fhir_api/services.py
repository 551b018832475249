"""What every request shares: the event store, its views, their projectors and the compliance services.

Built by the composition root (``fhir_api/bootstrap.py``), one function per deployment shape; this module
only uses what was built. It imports no HTTP framework: the CLI opens the same ``Services``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ehr_core.application import RecordApplication, Written
from ehr_core.errors import Issue, StoreUnavailable
from ehr_core.federation import Federation, StoreDown
from ehr_core.settings import Settings
from fhir_api.compliance import Compliance  # Audit log, ledgers
from fhir_api.registry import NAMES, PROJECTIONS, per_store
from fhir_api.threads import in_thread
from projections.db import ViewDatabase
from projections.federation import FederatedIdentity, StoreGroup
from projections.follower import LogFollower
from projections.identity import IdentityIndex
from projections.positions import PositionWatcher
from projections.projector import Projector, tracking_position
from projections.terminology.conformance import claimed_profiles, conformance_issues_in
from projections.terminology.store import TERMINOLOGY_TYPES, TerminologyStore

__all__ = ["Services", "home_store_async", "ledger_of"]


def ledger_of(store: str) -> str:
    """The ledger tables of one institution's store in the national database."""
    return "ledger_" + "".join(c if c.isascii() and c.isalnum() else "_" for c in store.lower())


log = logging.getLogger(__name__)


@dataclass
class _ReadState:
    """What one unit of work (:meth:`Services.one_read_state`) has read so far."""

    #: The projectors caught up with the log at the unit's first read.
    caught_up: set[str] = field(default_factory=set)
    #: Canonical resources looked up in the terminology store: (type, url, version) to what was found.
    canonicals: dict[tuple[str, str, str | None], dict[str, Any] | None] = field(default_factory=dict)


@dataclass
class Services:
    settings: Settings
    application: RecordApplication
    views: ViewDatabase
    #: The resource views' projector of this server's own log (its institution's store in a federation).
    projector: Projector
    #: The master patient index: matches Patient records as the log grows.
    identity: IdentityIndex
    #: The audit log, its views and the ledgers (see fhir_api/compliance.py).
    compliance: Compliance
    #: The projectors of the logs of the views' own database, by name (``fhir_api/registry.py``): every
    #: projection on one store; in a federation, the national logs (the MPI's decisions, the audit log).
    main_projectors: dict[str, Projector] = field(default_factory=dict)
    follower: LogFollower | None = None
    #: With ``EHR_PROJECTION=worker``, how this process learns what the ``ehr project`` worker applied.
    watcher: PositionWatcher | None = None
    #: The institutions' stores, when this server is one of a federation (``EHR_STORES``).
    federation: Federation | None = None
    #: The subscriptions' delivery thread (``fhir_api/subscriptions.py``), where this process delivers.
    deliverer: Any = None
    #: In a federation: builds the per-store projectors of another institution's store (``registry.per_store``).
    store_factory: Callable[[Services, str], list[Projector]] | None = None
    #: The terminology store's projector of this server's own log (``projections/terminology``).
    terminology: Projector | None = None
    _other_stores: dict[str, list[Projector]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Threads that bring the other projections of one write up to it beside the request's own (``_apply_all``).
    _beside: ThreadPoolExecutor | None = None
    #: Per thread: the unit of work reading one state of the views (:meth:`one_read_state`), if any.
    _reads: threading.local = field(default_factory=threading.local)

    @classmethod
    def open(cls, settings: Settings, follow: bool = True) -> Services:
        """The deployment ``settings`` describe (see ``fhir_api.bootstrap.open_services``)."""
        from fhir_api.bootstrap import open_services  # the root builds Services: imported when used

        return open_services(settings, follow)

    def home_store(self, resource_type: str, resource_id: str) -> RecordApplication:
        """The store a change of ``Type/id`` is appended to: its home in a federation."""
        if self.federation is None:
            return self.application
        return self.federation.application(self.federation.home_of(resource_type, resource_id))

    def wait_until_visible(self, *writes: Written | None) -> None:
        """Read-your-writes: block until the projections have applied ``writes`` (at most the projection wait):
        the resource views, and the index for a Patient and the terminology store for its resources."""
        by_store: dict[str, list[Written]] = {}
        for written in writes:
            if written is not None and written.notification_id is not None:
                by_store.setdefault(written.store, []).append(written)
        for store, written_there in by_store.items():
            own = self.store_projectors(store)  # resources, identity, terminology (registry.per_store)
            types = {written.resource_type for written in written_there}
            needed = own[:1]
            if "Patient" in types:
                needed.append(own[1])
            if types & TERMINOLOGY_TYPES:
                needed += own[2:3]
            self._wait_for(needed, store, max(int(w.notification_id or 0) for w in written_there))

    def wait_for_the_log(self) -> None:
        """With a projection worker, at start: block until the views have applied what the log held when this
        process started (at most the projection wait).

        A write answered, or committed by a server killed before it could answer, must be readable once a
        server answers again, as when the server projects itself (it catches up before serving). A worker
        starting beside a restarted server begins behind the log: without this wait the first reads would
        see the views as they were before the crash.
        """
        head = self.application.recorder.max_notification_id() or 0
        if head:
            self._wait_for(self.store_projectors(""), "", head)

    def wait_until_projected(self, name: str, notification_id: int) -> None:
        """Read-your-writes for a projection of a log in the views' own database (``main_projectors``), e.g.
        the break-the-glass review list of the audit log: block until it has applied ``notification_id``."""
        self._wait_for([self.main_projectors[name]], "", notification_id)

    def _wait_for(self, needed: Sequence[Projector], store: str, notification_id: int) -> None:
        caught_up = {}
        for projector, applied in zip(needed, self._apply_all(needed, store, notification_id), strict=True):
            if applied:
                caught_up[projector.name] = notification_id
            else:
                # The write is durable and its answer is right; only the views lag. Answering beats a
                # timeout the client would retry into a duplicate.
                log.warning(
                    "projection %r has not applied notification %s: is `ehr project` running, is the store up?",
                    projector.name,
                    notification_id,
                )
        # With a read replica, the answer waits for the replica to replay what was applied.
        if not self.views.settle(caught_up, self.settings.projection_wait_seconds):
            log.warning(
                "the views replica has not replayed %s after %ss", caught_up, self.settings.projection_wait_seconds
            )

    def _apply_all(self, needed: Sequence[Projector], store: str, notification_id: int) -> list[bool]:
        """:meth:`_applied` for each of ``needed``: at once, each in its own transaction, on PostgreSQL.

        The projections of one write are independent: each follows the log with a tracking row and tables of
        its own, and none reads another's views while it applies a batch (the master patient index reads its
        ``mpi_*`` tables and the log, not the resource views). A Patient create waited for the resource views'
        batch and then for the index's, each queued behind the batch already holding its tracking row: under
        32 clients that wait, two batches in series, was most of a create's time. Side by side it is the
        longer of the two. On SQLite the views have one writer at a time, so they still go one after the other.
        With a projection worker (``watcher``), this process only waits for positions: in turn costs nothing."""
        if len(needed) < 2 or self.watcher is not None or self.views.dialect != "postgres":
            return [self._applied(projector, store, notification_id) for projector in needed]
        beside = [self._beside_pool().submit(self._applied, p, store, notification_id) for p in needed[1:]]
        try:
            first = self._applied(needed[0], store, notification_id)
        finally:
            wait_all(beside)  # none outlives the request (a failure of the first is raised after them)
        return [first, *(future.result() for future in beside)]  # an error is raised here

    def _beside_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._beside is None:
                # One thread per create in flight at most (they block on a projector's lock or on the database).
                self._beside = ThreadPoolExecutor(max_workers=64, thread_name_prefix="ehr-visible")
            return self._beside

    def _applied(self, projector: Projector, store: str, notification_id: int) -> bool:
        if self.watcher is None:
            if self.federation is None:
                projector.catch_up(until=notification_id)
                return True
            try:
                projector.catch_up(until=notification_id)
            except (*StoreDown, StoreUnavailable):
                return False  # Its store went down right after the append: stored, not yet visible
            return True
        deadline = time.monotonic() + self.settings.projection_wait_seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self.watcher.wait(projector.name, notification_id, min(remaining, 2.0)):
                return True
            if self.federation is not None and not self.federation.reachable(store or self.federation.own):
                return False  # Nothing can project it before its store returns
        return False

    def store_projectors(self, store: str) -> list[Projector]:
        """The per-store projectors (resources, identity) of the log ``written`` went to (any store's)."""
        own = [self.projector, self.identity, *([self.terminology] if self.terminology is not None else [])]
        if self.federation is None or store in ("", self.federation.own):
            return own
        with self._lock:
            if store not in self._other_stores:
                assert self.store_factory is not None  # set by the federated composition
                self._other_stores[store] = self.store_factory(self, store)
            return self._other_stores[store]

    def projectors(self, names: Sequence[str] = ()) -> list[Projector]:
        """The deployment's projector of each projection ``names`` (all of ``registry.NAMES`` if empty).

        In a federation a per-store projection is every store's projector, built beside and swapped together.
        """
        wanted = set(names or NAMES)
        found: list[Projector] = []
        for projection in PROJECTIONS:
            if projection.name not in wanted:
                continue
            if projection.per_store and self.federation is not None:
                index = per_store().index(projection.name)
                members = [self.store_projectors(store)[index] for store in self.federation.names]
                found.append(StoreGroup(members, projection.name))
            elif projection.name in self.main_projectors:  # a federation keeps no subscriptions (yet)
                found.append(self.main_projectors[projection.name])
        return found

    def tracking_position(self, name: str) -> int:
        """Where the projection ``name`` stands in the views (as any process, e.g. ``ehr project``, left it)."""
        with self.views.read_primary() as tx:
            return tracking_position(tx, name)

    @contextmanager
    def one_read_state(self) -> Iterator[None]:
        """Within: this thread's conditional matches and profile checks read one state of the views, caught
        up with the log at the first read, and look each profile up once.

        For a unit of work whose writes are appended together at its end (a bulk import's chunk): nothing
        it writes can appear before that, so one catch-up sees all it could (read-your-writes holds for the
        next unit); another writer's commit meanwhile is concurrent with the whole unit, and the next one
        sees it. Each catch-up asks the log's head (a round trip), and each profile one more: per entry of
        a chunk of hundreds, they were most of an import's time on PostgreSQL."""
        if getattr(self._reads, "state", None) is not None:
            yield  # nested: the outer unit's state
            return
        self._reads.state = _ReadState()
        try:
            yield
        finally:
            self._reads.state = None

    def _read_state(self) -> _ReadState | None:
        state: _ReadState | None = getattr(self._reads, "state", None)
        return state

    def projector_current(self) -> Projector:
        """The resource views' projector, caught up with this server's log (a conditional match sees every
        committed write, a bulk import's too: it does not wait for the projections after each commit)."""
        state = self._read_state()
        if state is None or self.projector.name not in state.caught_up:
            if self.watcher is None:
                self.projector.catch_up_if_behind()
            else:
                # A worker projects: wait for it to apply the log as it stands (this process never projects,
                # its work is the requests').
                head = self.application.recorder.max_notification_id() or 0
                if self.watcher.position(self.projector.name) < head:
                    self._wait_for([self.projector], "", head)
            if state is not None:
                state.caught_up.add(self.projector.name)
        return self.projector

    def identity_current(self) -> IdentityIndex:
        """The master patient index, caught up with the log (read-your-writes for identity reads).

        Current means: it has applied what the resource views show. A write waits for the resource views
        only (except a Patient's), so an entry can be readable before the index has recorded who wrote it
        (``resource_sources``): read then, ``$everything`` would attribute it to an unknown institution."""
        if self.watcher is not None:
            # A worker projects, the resource views before the index, batch by batch; this process's own
            # projectors never move. The positions are the worker's, as announced.
            shown = self.watcher.position(self.projector.name)
            if self.watcher.position(self.identity.name) < shown:
                self._wait_for([self.identity], "", shown)
            return self.identity
        # Only when behind the resource views (an in-memory comparison): identity reads cost no write.
        if self.identity.position < self.projector.position:
            self.identity.catch_up()
            self.views.settle({self.identity.name: self.identity.position}, self.settings.projection_wait_seconds)
        return self.identity

    def terminology_current(self) -> TerminologyStore:
        """The terminology store, caught up with this server's log (read-your-writes for the operations)."""
        # Its positions are its log's own ids (a store's, in a federation): compared with that log's head.
        if self.terminology is None:
            return TerminologyStore(self.views)
        state = self._read_state()
        if state is not None:
            if self.terminology.name in state.caught_up:
                return TerminologyStore(self.views)
            state.caught_up.add(self.terminology.name)
        before = self.terminology.position
        if self.terminology.catch_up_if_behind() > before:
            self.views.settle({self.terminology.name: self.terminology.position}, self.settings.projection_wait_seconds)
        return TerminologyStore(self.views)

    def profile_issues(
        self, resource: dict[str, Any], profiles: list[str] | None = None, named: bool = False
    ) -> list[Issue]:
        """The issues of ``resource`` against ``profiles`` (default: those it claims in ``meta.profile``),
        looked up in the terminology store caught up with this server's log (a profile just PUT applies)."""
        store = self.terminology_current()
        wanted = claimed_profiles(resource) if profiles is None else profiles
        state = self._read_state()
        with store.database.read() as tx:
            if state is None:
                return conformance_issues_in(tx, resource, wanted, named)
            found = state.canonicals

            def find(tx: Any, resource_type: str, url: str, version: str | None) -> dict[str, Any] | None:
                key = (resource_type, url, version)
                if key not in found:
                    found[key] = TerminologyStore.find(tx, resource_type, url, version)
                return found[key]

            return conformance_issues_in(tx, resource, wanted, named, find=find)

    def close(self) -> None:
        if self._beside is not None:
            self._beside.shutdown(wait=True)
        if self.deliverer is not None:
            self.deliverer.stop()
        if self.follower is not None:
            self.follower.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.compliance.close()
        self.views.close()
        if isinstance(self.identity, FederatedIdentity):
            self.identity.national.application.close()
        if self.federation is not None:
            self.federation.close()  # the stores, this server's own among them
        else:
            self.application.close()


async def home_store_async(services: Services, resource_type: str, resource_id: str) -> RecordApplication:
    """:meth:`Services.home_store` from the event loop (outside a federation without leaving it)."""
    if services.federation is None:
        return services.application
    return await in_thread(services.home_store, resource_type, resource_id)
