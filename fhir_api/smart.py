"""``GET /fhir/.well-known/smart-configuration`` (SMART App Launch 2.x discovery), public."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from fhir_api.auth import smart_configuration
from fhir_api.request import ServicesDep, public_root

__all__ = ["router"]

router = APIRouter()


@router.get("/.well-known/smart-configuration", summary="SMART configuration")
def smart(request: Request, services: ServicesDep) -> Response:
    base = public_root(request)  # the authorization server is /oauth beside /fhir
    return Response(orjson.dumps(smart_configuration(services.settings, base)), media_type="application/json")
