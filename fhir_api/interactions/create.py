"""create: ``POST [base]/[type]`` (R4 §3.1.0.7), conditional with ``If-None-Exist`` (R4 §3.1.0.8).

R4 puts the condition in the header; some clients (fhirpy's ``get_or_create`` and ``create(**search)``) send
it as the query of the POST instead. A search in the URL of a create is taken as that condition rather than
ignored: ignoring it would make a duplicate of what the client asked not to duplicate.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue
from fhir_api.conditional import resolve_references, run_conditional
from fhir_api.interactions.visibility import make_visible
from fhir_api.request import ServicesDep, base_url, prefer_return, read_json_body, require_type, write_context
from fhir_api.responses import write_response
from fhir_api.threads import in_thread

router = APIRouter()

#: Query parameters of a create that are not a search (R4 http.html "general parameters").
_NOT_SEARCH = frozenset({"_format", "_pretty"})


@router.post("/{resource_type}", summary="create")
async def create(resource_type: str, request: Request, services: ServicesDep) -> Response:
    require_type(resource_type)
    resource = await read_json_body(request)
    context = write_context(request, "create")
    if_none_exist = request.headers.get("if-none-exist")
    search = urlencode([(k, v) for k, v in request.query_params.multi_items() if k not in _NOT_SEARCH])
    if search and if_none_exist:
        raise InvalidResource([Issue("invalid", "a conditional create takes If-None-Exist or a search, not both")])
    if_none_exist = if_none_exist or search
    if if_none_exist:
        prefer, base = prefer_return(request), base_url(request)
        return await run_conditional(
            request, services, "POST", resource_type, resource, context, prefer, base, if_none_exist
        )
    resource = await resolve_references(services, request, resource)
    written = await in_thread(services.application.create, resource, context, resource_type)
    await in_thread(make_visible, services, written)
    return write_response(written, 201, prefer_return(request), base_url(request))
