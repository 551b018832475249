"""The composition root: one event store, its views and their projector, shared by every request."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import psycopg

from ehr_core.application import RecordApplication, Written
from ehr_core.settings import Settings
from fhir_api.compliance import Compliance  # issue 6: audit log, ledgers
from projections.db import ViewDatabase
from projections.follower import LogFollower
from projections.identity import IdentityIndex
from projections.positions import PositionWatcher  # issue 8
from projections.projector import Projector, projected_channel
from projections.setup import open_view_database, resource_projector

__all__ = ["Services"]

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    application: RecordApplication
    views: ViewDatabase
    projector: Projector
    follower: LogFollower | None = None
    #: issue 6: the audit log, its views and the ledgers (see fhir_api/compliance.py).
    compliance: Compliance | None = None
    #: The master patient index (issue 5): matches Patient records as the log grows.
    identity: IdentityIndex | None = None
    #: issue 8: with ``EHR_PROJECTION=worker``, how this process learns what the ``ehr project`` worker applied.
    watcher: PositionWatcher | None = None

    @classmethod
    def open(cls, settings: Settings, follow: bool = True) -> Services:
        if settings.uses_postgres:
            with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
                connection.execute(
                    psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        psycopg.sql.Identifier(settings.postgres_schema)
                    )
                )
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
        services.compliance = Compliance.open(settings, application, views, follow)  # issue 6
        if not inline and follow:
            # issue 8: an ``ehr project`` worker applies the events; wait for its announcements instead.
            services.watcher = PositionWatcher(settings.postgres_conninfo(), channel, services._tracking_position)
            services.watcher.start()
        elif settings.uses_postgres and follow:
            # Other processes write too: follow their notifications, not only our own writes.
            channel = getattr(application.recorder, "channel_name", "ehr_events")
            followed = [projector, cast(Any, identity)]  # IdentityIndex follows like a Projector (catch_up)
            services.follower = LogFollower(followed, settings.postgres_conninfo(), channel)
            services.follower.start()
        return services

    def visible(self, written: Written | None) -> None:
        """Read-your-writes: return only once the projections have applied ``written``."""
        if written is None or written.notification_id is None:
            return
        needed = [self.projector]
        if written.resource_type == "Patient" and self.identity is not None:
            needed.append(self.identity)
        for projector in needed:
            if self.watcher is None:
                projector.catch_up(until=written.notification_id)
            elif not self.watcher.wait(projector.name, written.notification_id, self.settings.projection_wait_seconds):
                # The write is durable and its answer is right; only the views lag. Answering beats a
                # timeout the client would retry into a duplicate.
                log.warning(
                    "projection %r has not applied notification %s after %ss: is `ehr project` running?",
                    projector.name,
                    written.notification_id,
                    self.settings.projection_wait_seconds,
                )

    def _tracking_position(self, name: str) -> int:
        with self.views.read() as tx:
            row = tx.execute("SELECT position FROM projection_tracking WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def identity_current(self) -> IdentityIndex:
        """The master patient index, caught up with the log (read-your-writes for identity reads)."""
        assert self.identity is not None
        # Only when behind the resource views (an in-memory comparison): identity reads cost no write.
        if self.identity.position < self.projector.position:
            self.identity.catch_up()
        return self.identity

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.compliance is not None:  # issue 6
            self.compliance.close()
        self.views.close()
        self.application.close()
