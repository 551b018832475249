"""The FHIR REST surface. Order matters: literal paths (``metadata``, ``_history``) before ``{type}``."""

from __future__ import annotations

from fastapi import APIRouter

from fhir_api.interactions import capabilities, create, delete, history, patch, read, search, transaction, update
from fhir_api.operations import export

__all__ = ["fhir_router"]


def fhir_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")
    # transaction/batch lives on the base URL itself, which an included router cannot declare.
    router.add_api_route("", transaction.transaction, methods=["POST"], summary="transaction / batch")
    router.add_api_route("/", transaction.transaction, methods=["POST"], include_in_schema=False)
    # Operations first: ``$export`` would otherwise be taken for a resource type or id.
    router.include_router(export.router)
    # search before create and read: ``POST /{type}/_search`` and ``GET /{type}`` need no other pattern.
    for interaction in (capabilities, history, search, create, read, update, patch, delete):
        router.include_router(interaction.router)
    return router
