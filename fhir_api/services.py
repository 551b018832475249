"""The composition root: one event store, its views and their projector, shared by every request."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from ehr_core.application import RecordApplication, Written
from ehr_core.settings import Settings
from projections.db import ViewDatabase
from projections.follower import LogFollower
from projections.projector import Projector
from projections.setup import open_view_database, resource_projector

__all__ = ["Services"]


@dataclass
class Services:
    settings: Settings
    application: RecordApplication
    views: ViewDatabase
    projector: Projector
    follower: LogFollower | None = None

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
        projector.catch_up()
        services = cls(settings, application, views, projector)
        if settings.uses_postgres and follow:
            # Other processes write too: follow their notifications, not only our own writes.
            channel = getattr(application.recorder, "channel_name", "ehr_events")
            services.follower = LogFollower([projector], settings.postgres_conninfo(), channel)
            services.follower.start()
        return services

    def visible(self, written: Written | None) -> None:
        """Read-your-writes: return only once the projections have applied ``written``."""
        if written is not None and written.notification_id is not None:
            self.projector.catch_up(until=written.notification_id)

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        self.views.close()
        self.application.close()
