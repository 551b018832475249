"""The FHIR REST surface. Order matters: literal paths (``metadata``, ``_history``) before ``{type}``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute

from fhir_api import smart
from fhir_api.auth.pending import decided_first
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
from fhir_api.operations import (  # Ledger; and the terminology service: expand, lookup, subsumes...
    bulk_import,
    everything,
    expand,
    export,
    grants,
    ledger,
    lookup,
    match,
    person,
    subscription,
    subsumes,
    summary,
    translate,
    validate,
    validate_code,
)

__all__ = ["adopt_routes", "fhir_router"]


def fhir_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")
    # transaction/batch lives on the base URL itself, which an included router cannot declare.
    router.add_api_route("", transaction.transaction, methods=["POST"], summary="transaction / batch")
    router.add_api_route("/", transaction.transaction, methods=["POST"], include_in_schema=False)
    # search-system, GET [base]?params (R4 §3.1.0.9), on the base URL too.
    router.add_api_route("", search.search_system, methods=["GET"], summary="search-system")
    router.add_api_route("/", search.search_system, methods=["GET"], include_in_schema=False)
    adopt_routes(router, smart.router)  # /.well-known/smart-configuration before read
    # Operations first: ``$export`` would otherwise be taken for a resource type or id.
    adopt_routes(router, export.router)
    adopt_routes(router, bulk_import.router)  # $import and its status
    # $ledger-key/$ledger-head/$ledger-proof, and the server-written AuditEvent and Provenance; history
    # before them, or ``AuditEvent/_history`` would be taken for a read of the id ``_history``.
    adopt_routes(router, ledger.router)
    adopt_routes(router, history.router)
    adopt_routes(router, audit_resources.router)
    adopt_routes(router, subscription.router)  # Subscription $status and $events (backport IG)
    # Identity operations: $match, $ihe-pix, $everything, $summary, Person, and Patient read with links.
    for operation in (match, everything, summary, person, grants):
        adopt_routes(router, operation.router)
    # Terminology (R4 terminology-service.html): before read, which would take ``$expand`` for an id.
    for operation in (lookup, subsumes, expand, validate_code, translate):
        adopt_routes(router, operation.router)
    adopt_routes(router, validate.router)  # before create and read, which would take ``$validate`` for an id
    # search before create and read: ``POST /{type}/_search`` and ``GET /{type}`` need no other pattern.
    # Binary's native content (read, vread, create, update) before the generic interactions; after history
    # (included above) and search, whose ``Binary/_history`` and ``Binary/_search`` are not ids.
    for interaction in (capabilities, search, binary, create, read, update, patch, delete):
        if interaction is read:  # Patient served with links, Person as the golden record
            adopt_routes(router, person.read_router)
        adopt_routes(router, interaction.router)
    return router


def adopt_routes(router: APIRouter, source: APIRouter, decided: bool = False) -> None:
    """Add ``source``'s routes to ``router`` one by one, in order, rather than include ``source``.

    FastAPI keeps an included router as a branch that every request walks again, matching each of its
    routes once to choose the branch and again to handle it, with scope bookkeeping per route tried: with
    ~20 branches that was about a third of a read's CPU. One flat list is matched once per request, in the
    same order, so which route answers does not change. The routers adopted here declare no prefix,
    dependencies or tags of their own, so each route keeps everything it declared.

    ``decided``: each endpoint first takes the access policy's decision its request still needs, in the
    worker thread where it then reads (fhir_api/auth/pending.py): one hand-off to a thread per read, not two.
    """
    for route in source.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"only API routes can be adopted, not {route!r}")
        router.add_api_route(
            route.path,
            decided_first(route.endpoint) if decided else route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=list(route.tags),
            dependencies=list(route.dependencies),
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=dict(route.responses),
            deprecated=route.deprecated,
            methods=route.methods,
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
            generate_unique_id_function=route.generate_unique_id_function,
            strict_content_type=route.strict_content_type,
        )
