"""patch: ``PATCH [base]/[type]/[id]`` (R4 §3.1.0.5), honouring ``If-Match``.

The body's kind (JSON Patch, FHIRPath Patch, merge patch) is decided in ``ehr_core.resources.patch_body``;
the patched resource is validated like any update.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue
from ehr_core.resources import json as fhir_json
from ehr_core.resources.patch_body import JSON_PATCH, MERGE_PATCH, patch_change
from fhir_api.conditional import references_of, run_conditional
from fhir_api.interactions.visibility import make_visible
from fhir_api.request import (
    JSON_MEDIA_TYPES,
    ServicesDep,
    base_url,
    media_type,
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

PATCH_MEDIA_TYPES = JSON_MEDIA_TYPES | {JSON_PATCH, MERGE_PATCH}


@router.patch("/{resource_type}/{resource_id}", summary="patch")
async def patch(resource_type: str, resource_id: str, request: Request, services: ServicesDep) -> Response:
    require_type(resource_type)
    if_match = parse_if_match(request.headers.get("if-match"))
    body = await read_json_body(request, PATCH_MEDIA_TYPES)
    change = patch_change(media_type(request), body)
    references = references_of(services, request)

    def patched(current: dict[str, Any]) -> dict[str, Any]:
        # Conditional references resolve in the patched resource, at their element (ehr_core.references).
        resolved: dict[str, Any] = references.rewrite(change(current))
        return resolved

    context = write_context(request, "patch")
    application = await home_store_async(services, resource_type, resource_id)
    written = await in_thread(application.patch, resource_type, resource_id, patched, context, if_match)
    await in_thread(make_visible, services, written)
    return write_response(written, 200, prefer_return(request), base_url(request))


@router.patch("/{resource_type}", summary="conditional patch")
async def conditional_patch(resource_type: str, request: Request, services: ServicesDep) -> Response:
    """``PATCH [base]/[type]?search``: the one matching resource is patched (412 for several)."""
    require_type(resource_type)
    body = await read_json_body(request, PATCH_MEDIA_TYPES)
    context = write_context(request, "patch")
    url = f"{resource_type}?{request.url.query}"
    media = media_type(request)
    if media == JSON_PATCH:
        # In a Bundle a JSON Patch travels as a Binary; wrap it so the entry means the same thing.
        body = {"resourceType": "Binary", "contentType": JSON_PATCH, "data": _base64_json(body)}
    elif not isinstance(body, dict):
        raise InvalidResource(
            [Issue("invalid", f"PATCH takes {JSON_PATCH}, a FHIRPath Patch Parameters, or {MERGE_PATCH}")]
        )
    elif media in (MERGE_PATCH, "application/json") and body.get("resourceType") != "Parameters":
        # A merge patch (fhirpy's ``search(...).patch(field=value)``), as the instance PATCH takes it.
        body = {"resourceType": "Binary", "contentType": MERGE_PATCH, "data": _base64_json(body)}
    prefer, base = prefer_return(request), base_url(request)
    return await run_conditional(request, services, "PATCH", url, body, context, prefer, base)


def _base64_json(value: object) -> str:
    return base64.b64encode(fhir_json.dumps(value)).decode()
