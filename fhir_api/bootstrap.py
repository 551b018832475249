"""The composition root: which store, views, projectors and compliance services a deployment opens.

One function per deployment shape, each composed of small ``construct_*`` steps:

- ``single_store``: one event store (SQLite or a PostgreSQL schema) with its views beside it;
- ``federated``: writes to this server's institution store, reads from the national views (``EHR_STORES``).

The projections themselves are named in ``fhir_api/registry.py``; what is built here is keyed by those
names, and the server, ``ehr project``, ``ehr rebuild`` and ``/metrics`` all read the same ``Services``.
Imports no HTTP framework: the CLI is an entry point beside the server over this same root.
"""

from __future__ import annotations

from typing import Any, cast

from ehr_core.application import RecordApplication
from ehr_core.federation import Federation
from ehr_core.files import private_tree
from ehr_core.schema import setup_lock
from ehr_core.settings import Settings
from fhir_api.compliance import Compliance
from fhir_api.registry import NAMES
from fhir_api.services import Services, ledger_of
from projections.db import ViewDatabase
from projections.federation import FederatedIdentity, FederatedProjector
from projections.follower import LogFollower
from projections.identity import IdentityIndex
from projections.ledger import Ledger, witness_path
from projections.positions import PositionWatcher
from projections.projector import Projector, projected_channel
from projections.setup import open_view_database, resource_projector, resource_views, terminology_projector
from projections.subscriptions import SubscriptionMatcher

__all__ = [
    "construct_compliance",
    "construct_identity",
    "construct_matcher",
    "construct_store_ledger",
    "construct_store_projectors",
    "construct_views",
    "event_table",
    "federated",
    "open_services",
    "single_store",
    "start_deliverer",
]


def open_services(settings: Settings, follow: bool = True) -> Services:
    """The deployment ``settings`` describe. ``follow``: keep the views current with other writers (a server)."""
    # Files left readable by an older version (or copied in by hand): narrowed before serving anything.
    private_tree(settings.data_dir)
    with setup_lock(settings):  # one process at a time creates tables (see ehr_core/schema.py)
        services = federated(settings, follow) if settings.federated else single_store(settings, follow)
    if services.watcher is not None and services.federation is None:
        # Outside the setup lock: the worker sets its tables up under the same lock before it can apply.
        services.wait_for_the_log()
    return services


def single_store(settings: Settings, follow: bool) -> Services:
    """One event store, its views beside it; projected by this process, or by an ``ehr project`` worker."""
    application = RecordApplication(settings)
    views = construct_views(settings)
    projector = resource_projector(application, views, settings)
    identity = construct_identity(application, views, settings)
    terminology = terminology_projector(application, views, settings.projection_batch_size)
    matcher = construct_matcher(application, views, settings)
    inline = settings.projects_inline or not settings.uses_postgres
    channel = projected_channel(settings.postgres_schema)
    if settings.uses_postgres:
        projector.announce_to = identity.announce_to = terminology.announce_to = channel
        # The log is in the views' schema: each batch reads it in the statement that locks its tracking row.
        projector.log_table = identity.log_table = terminology.log_table = event_table(application)
    if inline:
        projector.catch_up()
        identity.catch_up()
        terminology.catch_up()
    compliance = construct_compliance(settings, application, views, follow)
    if settings.uses_postgres:
        compliance.break_glass_review.announce_to = channel
    services = _services(
        settings,
        application,
        views,
        projector,
        identity,
        compliance,
        national={"resources": projector, "identity": identity, "terminology": terminology, "subscriptions": matcher},
    )
    services.terminology = terminology
    application.profile_check = services.profile_issues  # meta.profile (projections/terminology/conformance)
    if inline and follow:
        # This process projects: it matches and delivers too, on a thread of its own (never a write's path).
        start_deliverer(services)
    if not inline and follow:
        # An ``ehr project`` worker applies the events; wait for its announcements instead.
        services.watcher = construct_watcher(services, channel)
    elif settings.uses_postgres and follow:
        # Other processes write too: follow their notifications, not only our own writes.
        log_channel = getattr(application.recorder, "channel_name", "ehr_events")
        followed = [projector, cast(Any, identity), terminology]  # IdentityIndex follows like a Projector
        services.follower = LogFollower(followed, settings.postgres_conninfo(), log_channel)
        services.follower.start()
    return services


def event_table(application: RecordApplication) -> str:
    """The PostgreSQL event table of ``application``'s log, schema-qualified and quoted for SQL."""
    recorder: Any = application.recorder
    return ".".join(
        '"' + name.replace('"', '""') + '"' for name in (recorder.datastore.schema, recorder.events_table_name)
    )


def federated(settings: Settings, follow: bool) -> Services:
    """Writes go to this server's institution store; reads come from the national views.

    The national database (``EHR_DATABASE_URL``) holds the views of every store, the MPI's decisions
    (its own small log) and the audit log. The ``ehr project`` worker follows every store's log; this
    process applies its own writes (or waits for the worker, with ``EHR_PROJECTION=worker``).
    """
    if not settings.uses_postgres:
        raise ValueError("EHR_STORES needs EHR_DATABASE_URL to be the national PostgreSQL database")
    federation = Federation(settings)
    own = federation.application(federation.own)
    views = construct_views(settings)
    batch = settings.projection_batch_size
    projector = FederatedProjector(federation.own, own, views, resource_views(settings), batch_size=batch)
    projector.create_tables()
    national = IdentityIndex(RecordApplication(settings), views, batch)  # the MPI's decisions: national
    identity = FederatedIdentity(federation.own, own, national, batch)
    identity.create_tables()
    terminology = terminology_projector(own, views, batch, store=federation.own)
    channel = projected_channel(settings.postgres_schema)
    projector.announce_to = identity.announce_to = terminology.announce_to = channel
    compliance = construct_compliance(settings, own, views, follow, ledger_name=ledger_of(federation.own))
    compliance.break_glass_review.announce_to = channel
    services = _services(settings, own, views, projector, identity, compliance, national={"identity": national})
    services.federation = federation
    services.store_factory = construct_store_projectors
    services.terminology = terminology
    own.profile_check = services.profile_issues  # meta.profile (projections/terminology/conformance)
    if settings.projects_inline:
        projector.catch_up()
        identity.catch_up()
        terminology.catch_up()
    elif follow:
        services.watcher = construct_watcher(services, channel)
    return services


def _services(
    settings: Settings,
    application: RecordApplication,
    views: ViewDatabase,
    projector: Projector,
    identity: IdentityIndex,
    compliance: Compliance,
    national: dict[str, Projector],
) -> Services:
    """``national``: the projectors of the logs in the views' own database, by registry name."""
    built = {**national, "audit": compliance.audit_projector, "break_glass": compliance.break_glass_review}
    assert set(built) <= set(NAMES), f"projections missing from fhir_api/registry.py: {set(built) - set(NAMES)}"
    main = {name: built[name] for name in NAMES if name in built}  # registry order: the order they are applied
    return Services(settings, application, views, projector, identity, compliance, main_projectors=main)


def construct_views(settings: Settings) -> ViewDatabase:
    return open_view_database(settings)


def construct_identity(application: RecordApplication, views: ViewDatabase, settings: Settings) -> IdentityIndex:
    identity = IdentityIndex(application, views, settings.projection_batch_size)
    identity.create_tables()
    return identity


def construct_compliance(
    settings: Settings, application: RecordApplication, views: ViewDatabase, follow: bool, ledger_name: str = "ledger"
) -> Compliance:
    return Compliance.open(settings, application, views, follow, ledger_name=ledger_name)


def construct_matcher(application: RecordApplication, views: ViewDatabase, settings: Settings) -> SubscriptionMatcher:
    matcher = SubscriptionMatcher(application, views, settings.projection_batch_size)
    matcher.create_tables()
    return matcher


def start_deliverer(services: Services) -> None:
    """Deliver the subscriptions' outbox from this process (``ehr serve`` inline, or ``ehr project``)."""
    from fhir_api.subscriptions import Deliverer  # the HTTP client: only where something is delivered

    matcher = services.main_projectors.get("subscriptions")
    if isinstance(matcher, SubscriptionMatcher) and services.deliverer is None:
        services.deliverer = Deliverer(services, matcher)
        # Woken by each commit of the resource views it matches against (never on the write's path).
        services.projector.on_applied.append(services.deliverer.wake)
        services.deliverer.start()


def construct_watcher(services: Services, channel: str) -> PositionWatcher:
    watcher = PositionWatcher(services.settings.postgres_conninfo(), channel, services.tracking_position)
    watcher.start()
    return watcher


def construct_store_projectors(services: Services, store: str) -> list[Projector]:
    """Another institution's store into the national views: its per-store projections (``registry.per_store``)."""
    assert services.federation is not None and isinstance(services.identity, FederatedIdentity)
    application = services.federation.application(store)
    batch = services.settings.projection_batch_size
    projector = FederatedProjector(
        store, application, services.views, resource_views(services.settings), batch_size=batch
    )
    identity = FederatedIdentity(store, application, services.identity.national, batch)
    terminology = terminology_projector(application, services.views, batch, store=store)
    for created in (projector, identity, terminology):
        created.create_tables()
        created.announce_to = services.projector.announce_to
    return [projector, identity, terminology]  # in the order of registry.per_store()


def construct_store_ledger(services: Services, store: str, application: Any) -> Ledger:
    """The signed ledger of one institution's store, kept in the national database."""
    name = ledger_of(store)
    ledger = Ledger(
        application,
        services.views,
        services.compliance.key,
        name,
        services.compliance.ledger.block_size,
        witness_path(services.settings, name),
    )
    ledger.create_tables()
    return ledger
