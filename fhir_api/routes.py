"""The FHIR REST surface. Order matters: literal paths (``metadata``, ``_history``) before ``{type}``."""

from __future__ import annotations

from fastapi import APIRouter

from fhir_api import smart
from fhir_api.interactions import (
    audit_resources,
    binary,
    capabilities,
    create,
    delete,
    history,
    patch,
    read,
    search,
    transaction,
    update,
)
from fhir_api.operations import bulk_import, everything, export, ledger, match, person, subscription, summary  # Ledger

__all__ = ["fhir_router"]


def fhir_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")
    # transaction/batch lives on the base URL itself, which an included router cannot declare.
    router.add_api_route("", transaction.transaction, methods=["POST"], summary="transaction / batch")
    router.add_api_route("/", transaction.transaction, methods=["POST"], include_in_schema=False)
    # search-system, GET [base]?params (R4 §3.1.0.9), on the base URL too.
    router.add_api_route("", search.search_system, methods=["GET"], summary="search-system")
    router.add_api_route("/", search.search_system, methods=["GET"], include_in_schema=False)
    router.include_router(smart.router)  # /.well-known/smart-configuration before read
    # Operations first: ``$export`` would otherwise be taken for a resource type or id.
    router.include_router(export.router)
    router.include_router(bulk_import.router)  # $import and its status
    # $ledger-key/$ledger-head/$ledger-proof, and the server-written AuditEvent and Provenance.
    router.include_router(ledger.router)
    router.include_router(audit_resources.router)
    router.include_router(subscription.router)  # Subscription $status and $events (backport IG)
    # Identity operations: $match, $ihe-pix, $everything, $summary, Person, and Patient read with links.
    for operation in (match, everything, summary, person):
        router.include_router(operation.router)
    # search before create and read: ``POST /{type}/_search`` and ``GET /{type}`` need no other pattern.
    # Binary's native content (read, vread, create, update) before the generic interactions; after history
    # and search, whose ``Binary/_history`` and ``Binary/_search`` are not ids.
    for interaction in (capabilities, history, search, binary, create, read, update, patch, delete):
        if interaction is read:  # Patient served with links, Person as the golden record
            router.include_router(person.read_router)
        router.include_router(interaction.router)
    return router
