"""The composition root: one event store, its views and their projector, shared by every request."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from starlette.concurrency import run_in_threadpool

from ehr_core.application import RecordApplication, Written
from ehr_core.errors import StoreUnavailable
from ehr_core.federation import Federation, StoreDown
from ehr_core.files import private_tree
from ehr_core.schema import setup_lock
from ehr_core.settings import Settings
from fhir_api.compliance import Compliance  # Audit log, ledgers
from projections.db import ViewDatabase
from projections.federation import FederatedIdentity, FederatedProjector
from projections.follower import LogFollower
from projections.identity import IdentityIndex
from projections.positions import PositionWatcher
from projections.projector import Projector, projected_channel
from projections.setup import open_view_database, resource_projector, resource_views

__all__ = ["Services", "home_application", "ledger_of"]


def ledger_of(store: str) -> str:
    """The ledger tables of one institution's store in the national database."""
    return "ledger_" + "".join(c if c.isascii() and c.isalnum() else "_" for c in store.lower())


log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    application: RecordApplication
    views: ViewDatabase
    projector: Projector
    follower: LogFollower | None = None
    #: The audit log, its views and the ledgers (see fhir_api/compliance.py).
    compliance: Compliance | None = None
    #: The master patient index: matches Patient records as the log grows.
    identity: IdentityIndex | None = None
    #: With ``EHR_PROJECTION=worker``, how this process learns what the ``ehr project`` worker applied.
    watcher: PositionWatcher | None = None
    #: The institutions' stores, when this server is one of a federation (``EHR_STORES``).
    federation: Federation | None = None
    _other_stores: dict[str, list[Projector]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings, follow: bool = True) -> Services:
        # Files left readable by an older version (or copied in by hand): narrowed before serving anything.
        private_tree(settings.data_dir)
        with setup_lock(settings):  # one process at a time creates tables (see ehr_core/schema.py)
            if settings.federated:
                return cls._open_federated(settings, follow)
            return cls._open(settings, follow)

    @classmethod
    def _open(cls, settings: Settings, follow: bool) -> Services:
        application = RecordApplication(settings)
        views = open_view_database(settings)
        projector = resource_projector(application, views, settings)
        identity = IdentityIndex(application, views, settings.projection_batch_size)
        identity.create_tables()
        inline = settings.projects_inline or not settings.uses_postgres
        if settings.uses_postgres:
            channel = projected_channel(settings.postgres_schema)
            projector.announce_to = identity.announce_to = channel
        if inline:
            projector.catch_up()
            identity.catch_up()
        services = cls(settings, application, views, projector, identity=identity)
        services.compliance = Compliance.open(settings, application, views, follow)
        if not inline and follow:
            # An ``ehr project`` worker applies the events; wait for its announcements instead.
            services.watcher = PositionWatcher(settings.postgres_conninfo(), channel, services._tracking_position)
            services.watcher.start()
        elif settings.uses_postgres and follow:
            # Other processes write too: follow their notifications, not only our own writes.
            channel = getattr(application.recorder, "channel_name", "ehr_events")
            followed = [projector, cast(Any, identity)]  # IdentityIndex follows like a Projector (catch_up)
            services.follower = LogFollower(followed, settings.postgres_conninfo(), channel)
            services.follower.start()
        return services

    @classmethod
    def _open_federated(cls, settings: Settings, follow: bool) -> Services:
        """Writes go to this server's institution store; reads come from the national views.

        The national database (``EHR_DATABASE_URL``) holds the views of every store, the MPI's decisions
        (its own small log) and the audit log. The ``ehr project`` worker follows every store's log; this
        process applies its own writes (or waits for the worker, with ``EHR_PROJECTION=worker``).
        """
        if not settings.uses_postgres:
            raise ValueError("EHR_STORES needs EHR_DATABASE_URL to be the national PostgreSQL database")
        federation = Federation(settings)
        own = federation.application(federation.own)
        views = open_view_database(settings)
        batch = settings.projection_batch_size
        projector = FederatedProjector(federation.own, own, views, resource_views(), batch_size=batch)
        projector.create_tables()
        national = IdentityIndex(RecordApplication(settings), views, batch)  # the MPI's decisions: national
        identity = FederatedIdentity(federation.own, own, national, batch)
        identity.create_tables()
        channel = projected_channel(settings.postgres_schema)
        projector.announce_to = identity.announce_to = channel
        services = cls(settings, own, views, projector, identity=identity, federation=federation)
        services.compliance = Compliance.open(settings, own, views, follow, ledger_name=ledger_of(federation.own))
        if settings.projects_inline:
            projector.catch_up()
            identity.catch_up()
        elif follow:
            services.watcher = PositionWatcher(settings.postgres_conninfo(), channel, services._tracking_position)
            services.watcher.start()
        return services

    def application_for(self, resource_type: str, resource_id: str) -> RecordApplication:
        """The store a change of ``Type/id`` is appended to: its home in a federation."""
        if self.federation is None:
            return self.application
        return self.federation.application(self.federation.home_of(resource_type, resource_id))

    def visible(self, written: Written | None) -> None:
        """Read-your-writes: return only once the projections have applied ``written``."""
        if written is None or written.notification_id is None:
            return
        needed: list[Projector] = self.store_projectors(written.store)
        if written.resource_type != "Patient":
            needed = needed[:1]
        caught_up = {}
        for projector in needed:
            if self._applied(projector, written.store, written.notification_id):
                caught_up[projector.name] = written.notification_id
            else:
                # The write is durable and its answer is right; only the views lag. Answering beats a
                # timeout the client would retry into a duplicate.
                log.warning(
                    "projection %r has not applied notification %s: is `ehr project` running, is the store up?",
                    projector.name,
                    written.notification_id,
                )
        # With a read replica, the answer waits for the replica to replay what was applied.
        if not self.views.settle(caught_up, self.settings.projection_wait_seconds):
            log.warning(
                "the views replica has not replayed %s after %ss", caught_up, self.settings.projection_wait_seconds
            )

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
        """The resource and identity projectors of the log ``written`` went to (any store's)."""
        own = [self.projector, *([self.identity] if self.identity is not None else [])]
        if self.federation is None or store in ("", self.federation.own):
            return own
        with self._lock:
            if store not in self._other_stores:
                application = self.federation.application(store)
                batch = self.settings.projection_batch_size
                projector = FederatedProjector(store, application, self.views, resource_views(), batch_size=batch)
                assert isinstance(self.identity, FederatedIdentity)
                identity = FederatedIdentity(store, application, self.identity.national, batch)
                for created in (projector, identity):
                    created.create_tables()
                    created.announce_to = self.projector.announce_to
                self._other_stores[store] = [projector, identity]
            return self._other_stores[store]

    def _tracking_position(self, name: str) -> int:
        with self.views.read_primary() as tx:
            row = tx.execute("SELECT position FROM projection_tracking WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def identity_current(self) -> IdentityIndex:
        """The master patient index, caught up with the log (read-your-writes for identity reads)."""
        assert self.identity is not None
        # Only when behind the resource views (an in-memory comparison): identity reads cost no write.
        if self.identity.position < self.projector.position:
            self.identity.catch_up()
            self.views.settle({self.identity.name: self.identity.position}, self.settings.projection_wait_seconds)
        return self.identity

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.compliance is not None:
            self.compliance.close()
        self.views.close()
        if isinstance(self.identity, FederatedIdentity):
            self.identity.national.application.close()
        if self.federation is not None:
            self.federation.close()  # the stores, this server's own among them
        else:
            self.application.close()


async def home_application(services: Services, resource_type: str, resource_id: str) -> RecordApplication:
    """The store a change of ``Type/id`` goes to; outside a federation, without leaving the event loop."""
    if services.federation is None:
        return services.application
    return await run_in_threadpool(services.application_for, resource_type, resource_id)
