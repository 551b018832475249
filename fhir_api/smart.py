"""``GET /fhir/.well-known/smart-configuration`` (SMART App Launch 2.x discovery), public."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from fhir_api.auth import smart_configuration
from fhir_api.request import ServicesDep

__all__ = ["router"]

router = APIRouter()


@router.get("/.well-known/smart-configuration", summary="SMART configuration")
def smart(services: ServicesDep) -> Response:
    return Response(orjson.dumps(smart_configuration(services.settings)), media_type="application/json")
