"""Binary in its native form (R4 binary.html "Serving Binary Resources using the RESTful API", http.html
"Support for Binary resources").

Write: ``POST [base]/Binary`` and ``PUT [base]/Binary/[id]`` with any non-FHIR ``Content-Type``
(``application/pdf``, ``image/png``...) store a Binary whose ``contentType`` is that type and ``data`` the
body's base64, as R4 says ("the data is accepted as is and treated as the binary content of a Binary").
A FHIR body (``application/fhir+json``, and ``application/json``, which this server takes as FHIR JSON
everywhere; ``application/fhir+xml``, read into JSON by :mod:`fhir_api.formats` before it arrives here) is a
Binary resource and goes through the ordinary create and update; a generic ``application/xml`` body is
content. ``EHR_MAX_BODY_BYTES`` limits the native body (413), and the stored resource, base64 included, is held to
``EHR_MAX_RESOURCE_BYTES`` (413) like any resource: base64 makes it a third larger than the body.

``X-Security-Context: Patient/123`` (R4 http.html: "the client may provide a security context for the
binary content") sets ``Binary.securityContext``; it must be a relative reference ``Type/id`` to a known
type (400 otherwise). With a FHIR body it is refused (400): the resource carries its own
``securityContext``, and two sources could disagree.

Read: R4 binary.html: a read "that doesn't explicitly specify the FHIR content types" is answered with the
content itself, in the resource's ``contentType``. So ``Accept`` naming a FHIR media type (or ``_format``,
``_summary``, ``_elements``, which only a FHIR representation has) gets the Binary resource as JSON; any
other ``Accept``, ``*/*`` or none, gets the raw bytes with ``Content-Type`` = ``Binary.contentType``
(whatever non-FHIR type was asked: the spec makes no promise on matching it). ETag, Last-Modified and
conditional reads (304) work as for every read; vread likewise; ``_at`` as on every read. History answers
a Bundle, as for any type. The raw answer is sent with ``X-Content-Type-Options: nosniff`` and a
``sandbox`` Content-Security-Policy (R4 binary.html "Security": stored HTML or SVG must not run as the
server's own page).

Access: the access policy (``fhir_api/auth``, before routing) decides the read of a Binary like any other
read. A Binary's ``securityContext`` places it in a patient compartment (``ehr_core/compartment.py``): a
Patient's own, or the compartment of the resource it names; so another institution reads it only with that
patient's active Consent (or break-the-glass), and a patient-facing app reads its patient's Binaries. Without
a securityContext a Binary stays with the institution that recorded it.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue
from ehr_core.resources.types import is_supported
from fhir_api.interactions import create as create_interaction
from fhir_api.interactions import update as update_interaction
from fhir_api.interactions.read import current, lookup, lookup_version, not_modified, read_response
from fhir_api.interactions.visibility import make_visible
from fhir_api.limits import check_write_deadline
from fhir_api.request import (
    JSON_MEDIA_TYPES,
    ServicesDep,
    base_url,
    media_type,
    parse_if_match,
    prefer_return,
    read_body,
    write_context,
)
from fhir_api.responses import etag, http_date, write_response
from fhir_api.services import home_store_async
from fhir_api.threads import in_thread
from projections.resources import StoredResource

__all__ = ["FHIR_MEDIA_TYPES", "router", "wants_resource"]

router = APIRouter()

#: Media types whose body is a FHIR resource (R4 http.html "Content Types and encodings"); the XML ones are
#: answered 415 by the ordinary create, as everywhere on this JSON-only server.
FHIR_MEDIA_TYPES = JSON_MEDIA_TYPES | {"application/fhir+xml", "application/xml+fhir"}
_FORMAT_RESOURCE = {"json", "xml", "application/json", "application/xml", "text/xml", *FHIR_MEDIA_TYPES}
_REFERENCE = re.compile(r"([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})")
#: Stored content is served as it came: never sniffed into a script, never run as this origin's page.
_NATIVE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}


def security_context(request: Request) -> dict[str, str] | None:
    """``X-Security-Context`` as ``Binary.securityContext`` (None without the header)."""
    header = request.headers.get("x-security-context")
    if header is None:
        return None
    value = header.strip()
    match = _REFERENCE.fullmatch(value)
    if match is None or not is_supported(match.group(1)):
        raise InvalidResource(
            [
                Issue(
                    "value",
                    f"X-Security-Context must be a relative reference Type/id to a resource, such as Patient/123; "
                    f"got {value[:100]!r}",
                    "Binary.securityContext",
                )
            ]
        )
    return {"reference": value}


def _is_fhir(request: Request) -> bool:
    kind = media_type(request)
    return kind is None or kind in FHIR_MEDIA_TYPES


async def _native_binary(request: Request, resource_id: str | None) -> dict[str, Any]:
    """The Binary a native body makes: its Content-Type, the securityContext header, the body in base64."""
    context = security_context(request)
    content_type = (request.headers.get("content-type") or "").strip()
    body = await read_body(request)
    resource: dict[str, Any] = {"resourceType": "Binary"}
    if resource_id is not None:
        resource["id"] = resource_id
    resource["contentType"] = content_type
    if context is not None:
        resource["securityContext"] = context
    if body:  # Binary.data is 0..1: an empty body is a Binary without content
        resource["data"] = base64.b64encode(body).decode("ascii")
    check_write_deadline()
    return resource


def _refuse_header_with_resource(request: Request) -> None:
    if request.headers.get("x-security-context") is not None:
        raise InvalidResource(
            [
                Issue(
                    "invalid",
                    "X-Security-Context goes with native content; a Binary resource body carries its own "
                    "securityContext",
                    "Binary.securityContext",
                )
            ]
        )


@router.post("/Binary", summary="create (Binary: a FHIR resource, or native content of any type)")
async def create_binary(request: Request, services: ServicesDep) -> Response:
    if _is_fhir(request):
        _refuse_header_with_resource(request)
        return await create_interaction.create("Binary", request, services)
    resource = await _native_binary(request, None)
    context = write_context(request, "create")
    written = await in_thread(services.application.create, resource, context, "Binary")
    await in_thread(make_visible, services, written)
    return write_response(written, 201, prefer_return(request), base_url(request))


@router.put("/Binary/{resource_id}", summary="update (Binary: a FHIR resource, or native content of any type)")
async def update_binary(resource_id: str, request: Request, services: ServicesDep) -> Response:
    if _is_fhir(request):
        _refuse_header_with_resource(request)
        return await update_interaction.update("Binary", resource_id, request, services)
    if_match = parse_if_match(request.headers.get("if-match"))
    resource = await _native_binary(request, resource_id)
    context = write_context(request, "update")
    application = await home_store_async(services, "Binary", resource_id)
    written = await in_thread(application.update, "Binary", resource_id, resource, context, if_match)
    await in_thread(make_visible, services, written)
    return write_response(written, 201 if written.created else 200, prefer_return(request), base_url(request))


def wants_resource(request: Request) -> bool:
    """Whether a read of a Binary asks for the FHIR resource rather than its content (R4 binary.html: only
    when it "explicitly specif[ies] the FHIR content types")."""
    params = request.query_params
    if "_summary" in params or "_elements" in params:
        return True
    given = params.get("_format")
    if given is not None and given.split(";")[0].strip().lower() in _FORMAT_RESOURCE:
        return True
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip().lower() in FHIR_MEDIA_TYPES for part in accept.split(","))


def _native(request: Request, stored: StoredResource) -> Response:
    """The content of a stored Binary, in its own content type, with the read's ETag and Last-Modified."""
    assert stored.body is not None
    validators = {"ETag": etag(stored.version), "Last-Modified": http_date(stored.last_updated)}
    if not_modified(request, stored.version, stored.last_updated):
        return Response(status_code=304, headers=validators)
    resource = orjson.loads(stored.body)
    data = resource.get("data")
    try:
        content = base64.b64decode(data) if isinstance(data, str) else b""
    except (binascii.Error, ValueError):
        # Stored as a client sent it (the server never rewrites base64): what cannot be decoded is served
        # as the resource it is, rather than as bytes it does not hold.
        return read_response(request, stored.body, stored.version, stored.last_updated)
    content_type = resource.get("contentType") or "application/octet-stream"
    return Response(content, headers={"Content-Type": content_type, **validators, **_NATIVE_HEADERS})


def _answer(request: Request, stored: StoredResource | None, what: str) -> Response:
    found = current(stored, what)
    assert found.body is not None
    if wants_resource(request):
        return read_response(request, found.body, found.version, found.last_updated)
    return _native(request, found)


@router.get("/Binary/{resource_id}", summary="read (Binary: its content, or the resource with a FHIR Accept)")
def read_binary(resource_id: str, request: Request, services: ServicesDep) -> Response:
    return _answer(request, *lookup(services, "Binary", resource_id, request.query_params.get("_at")))


@router.get("/Binary/{resource_id}/_history/{version_id}", summary="vread (Binary)")
def vread_binary(resource_id: str, version_id: str, request: Request, services: ServicesDep) -> Response:
    return _answer(request, *lookup_version(services, "Binary", resource_id, version_id))
