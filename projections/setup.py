"""Opening the views for a deployment: which database, which projectors."""

from __future__ import annotations

from typing import Any

from eventsourcing.application import Application

from ehr_core.settings import Settings
from projections.access import AccessView, BreakGlassReview
from projections.audit import AuditProjector
from projections.db import PostgresViews, SQLiteViews, ViewDatabase
from projections.federation import tracking_name
from projections.privacy import PrivacyView
from projections.projector import Projector
from projections.provenance import ProvenanceView
from projections.resources import ResourceViews
from projections.search import FullTextIndex, SearchIndex
from projections.terminology.store import TerminologyView
from projections.view import View

__all__ = [
    "audit_projector",
    "break_glass_projector",
    "open_view_database",
    "resource_projector",
    "resource_views",
    "terminology_projector",
]


def open_view_database(settings: Settings, schema: str | None = None) -> ViewDatabase:
    """The views live beside the events: the same PostgreSQL schema, or ``views.sqlite`` in the data dir."""
    if settings.uses_postgres:
        return PostgresViews(
            settings.postgres_conninfo(),
            schema or settings.postgres_schema,
            settings.postgres_pool_size,
            replica_conninfo=settings.replica_conninfo(),
            auto_analyze=settings.postgres_auto_analyze,
        )
    return SQLiteViews(settings.data_dir / "views.sqlite")


def resource_views(settings: Settings | None = None) -> list[View]:
    # ProvenanceView: PrivacyView (erasures), AccessView (owners, consents, referral grants). FullTextIndex
    # after SearchIndex: its rows carry the search key (sid) the search index gives a resource.
    days = settings.referral_grant_days if settings is not None else 90
    return [
        ResourceViews(),
        SearchIndex(),
        FullTextIndex(),
        ProvenanceView(),
        PrivacyView(),
        AccessView(referral_grant_days=days),
    ]


def resource_projector(application: Application[Any], database: ViewDatabase, settings: Settings) -> Projector:
    projector = Projector(
        application, database, resource_views(settings), name="resources", batch_size=settings.projection_batch_size
    )
    projector.create_tables()
    return projector


def terminology_projector(
    application: Application[Any], database: ViewDatabase, batch_size: int, store: str | None = None
) -> Projector:
    """The terminology store: its own projection, so that a rebuild of it, or its lag, concerns the
    terminology operations only. Tracking row ``terminology``, or ``terminology@{store}`` for one
    institution's log in a federation: its rows hold no notification id, so it needs no national positions
    (``federation_log`` is the resource projector's) and follows the store's own ids."""
    name = "terminology" if store is None else tracking_name("terminology", store)
    projector = Projector(application, database, [TerminologyView()], name=name, batch_size=batch_size)
    projector.create_tables()
    return projector


def audit_projector(audit_log: Application[Any], database: ViewDatabase, settings: Settings) -> AuditProjector:
    """The AuditEvent views over the audit log (tracking row ``audit``), their tables created."""
    projector = AuditProjector(audit_log, database, [], name="audit", batch_size=settings.projection_batch_size)
    projector.create_tables()
    return projector


def break_glass_projector(audit_log: Application[Any], database: ViewDatabase, settings: Settings) -> BreakGlassReview:
    """The break-the-glass review list over the audit log (tracking row ``break_glass``), its table created."""
    projector = BreakGlassReview(audit_log, database, [], name="break_glass", batch_size=settings.projection_batch_size)
    projector.create_tables()
    return projector
