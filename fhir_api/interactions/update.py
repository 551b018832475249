"""update: ``PUT [base]/[type]/[id]``, with create-on-update and ``If-Match`` (R4 §3.1.0.4).

Conditional update, ``PUT [base]/[type]?search`` (R4 §3.1.0.4.3), runs through :mod:`fhir_api.conditional`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fhir_api.conditional import resolve_references, run_conditional
from fhir_api.interactions.visibility import make_visible
from fhir_api.request import (
    ServicesDep,
    base_url,
    parse_if_match,
    prefer_return,
    read_json_body,
    require_type,
    write_context,
)
from fhir_api.responses import write_response
from fhir_api.services import home_store_async
from fhir_api.threads import in_thread

router = APIRouter()


@router.put("/{resource_type}/{resource_id}", summary="update")
async def update(resource_type: str, resource_id: str, request: Request, services: ServicesDep) -> Response:
    require_type(resource_type)
    if_match = parse_if_match(request.headers.get("if-match"))
    resource = await read_json_body(request)
    context = write_context(request, "update")
    resource = await resolve_references(services, request, resource)
    application = await home_store_async(services, resource_type, resource_id)
    written = await in_thread(application.update, resource_type, resource_id, resource, context, if_match)
    await in_thread(make_visible, services, written)
    return write_response(written, 201 if written.created else 200, prefer_return(request), base_url(request))


@router.put("/{resource_type}", summary="conditional update")
async def conditional_update(resource_type: str, request: Request, services: ServicesDep) -> Response:
    require_type(resource_type)
    resource = await read_json_body(request)
    context = write_context(request, "update")
    url = f"{resource_type}?{request.url.query}"
    prefer, base = prefer_return(request), base_url(request)
    return await run_conditional(request, services, "PUT", url, resource, context, prefer, base)
