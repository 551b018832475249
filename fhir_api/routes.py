"""The FHIR REST surface. Order matters: literal paths (``metadata``, ``_history``) before ``{type}``."""

from __future__ import annotations

from fastapi import APIRouter

from fhir_api.interactions import capabilities, create, delete, history, read, update

__all__ = ["fhir_router"]


def fhir_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")
    for interaction in (capabilities, history, create, read, update, delete):
        router.include_router(interaction.router)
    return router
