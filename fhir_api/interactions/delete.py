"""delete: ``DELETE [base]/[type]/[id]`` (R4 §3.1.0.6): a retraction; history keeps every version."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fhir_api.conditional import run_conditional
from fhir_api.interactions.visibility import make_visible
from fhir_api.limits import check_write_deadline
from fhir_api.request import ServicesDep, parse_if_match, require_type, write_context
from fhir_api.responses import etag
from fhir_api.services import home_store_async
from fhir_api.threads import in_thread

router = APIRouter()


@router.delete("/{resource_type}/{resource_id}", summary="delete")
async def delete(resource_type: str, resource_id: str, request: Request, services: ServicesDep) -> Response:
    require_type(resource_type)
    if_match = parse_if_match(request.headers.get("if-match"))
    context = write_context(request, "delete")
    check_write_deadline()  # Out of time before the append: 503, nothing written
    application = await home_store_async(services, resource_type, resource_id)
    written = await in_thread(application.delete, resource_type, resource_id, context, if_match)
    await in_thread(make_visible, services, written)
    # Deleting what is absent or already deleted succeeds too: delete is idempotent (R4 §3.1.0.6).
    headers = {"ETag": etag(written.version)} if written is not None else {}
    return Response(status_code=204, headers=headers)


@router.delete("/{resource_type}", summary="conditional delete")
async def conditional_delete(resource_type: str, request: Request, services: ServicesDep) -> Response:
    """``DELETE [base]/[type]?search`` (R4 §3.1.0.6.1): one match is deleted; several are refused (412)."""
    require_type(resource_type)
    context = write_context(request, "delete")
    url = f"{resource_type}?{request.url.query}"
    return await run_conditional(request, services, "DELETE", url, None, context, "minimal", "")
