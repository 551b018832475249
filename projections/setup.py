"""Opening the views for a deployment: which database, which projectors."""

from __future__ import annotations

from typing import Any

from eventsourcing.application import Application

from ehr_core.settings import Settings
from projections.access import AccessView
from projections.audit import AuditProjector
from projections.db import PostgresViews, SQLiteViews, ViewDatabase
from projections.privacy import PrivacyView
from projections.projector import Projector
from projections.provenance import ProvenanceView
from projections.resources import ResourceViews
from projections.search import SearchIndex
from projections.view import View

__all__ = ["audit_projector", "open_view_database", "resource_projector", "resource_views"]


def open_view_database(settings: Settings, schema: str | None = None) -> ViewDatabase:
    """The views live beside the events: the same PostgreSQL schema, or ``views.sqlite`` in the data dir."""
    if settings.uses_postgres:
        return PostgresViews(
            settings.postgres_conninfo(),
            schema or settings.postgres_schema,
            settings.postgres_pool_size,
            replica_conninfo=settings.replica_conninfo(),
        )
    return SQLiteViews(settings.data_dir / "views.sqlite")


def resource_views(settings: Settings | None = None) -> list[View]:
    # ProvenanceView: PrivacyView (erasures), AccessView (owners, consents, referral grants)
    days = settings.referral_grant_days if settings is not None else 90
    return [ResourceViews(), SearchIndex(), ProvenanceView(), PrivacyView(), AccessView(referral_grant_days=days)]


def resource_projector(application: Application[Any], database: ViewDatabase, settings: Settings) -> Projector:
    projector = Projector(
        application, database, resource_views(settings), name="resources", batch_size=settings.projection_batch_size
    )
    projector.create_tables()
    return projector


def audit_projector(audit_log: Application[Any], database: ViewDatabase, settings: Settings) -> AuditProjector:
    """The AuditEvent views over the audit log (tracking row ``audit``), their tables created."""
    projector = AuditProjector(audit_log, database, [], name="audit", batch_size=settings.projection_batch_size)
    projector.create_tables()
    return projector
