"""Reading a FHIR request: media type, size, body, preconditions, preferences and the caller's context."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Depends, Request

from ehr_core.context import WriteContext
from ehr_core.errors import InvalidResource, Issue, NotFound
from ehr_core.resources import json as fhir_json
from ehr_core.resources.types import is_supported
from fhir_api.errors import ApiError
from fhir_api.limits import check_json_depth, check_write_deadline
from fhir_api.services import Services

__all__ = [
    "ServicesDep",
    "base_url",
    "parse_if_match",
    "prefer_return",
    "public_root",
    "read_body",
    "read_json_body",
    "require_type",
    "write_context",
]

# R4 §2.6 "JSON": the FHIR media type, plus the ones real clients send (fhirpy: application/json).
JSON_MEDIA_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})


async def get_services(request: Request) -> Services:
    """The open store. A coroutine although it awaits nothing: FastAPI runs a plain-function dependency in a
    worker thread (one more thread hop per request, for an attribute lookup), a coroutine on the event loop."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def public_root(request: Request) -> str:
    """The server's root URL: ``EHR_PUBLIC_URL`` (behind a proxy, the URL users reach), else as the
    client addressed this request."""
    configured = request.app.state.services.settings.public_url
    return str(configured or request.base_url).rstrip("/")


def base_url(request: Request) -> str:
    """The server's FHIR base, as its users reach it."""
    return f"{public_root(request)}/fhir"


def require_type(resource_type: str) -> str:
    if is_supported(resource_type):
        return resource_type
    raise NotFound(f"unknown resource type {resource_type!r}", code="not-supported")


def media_type(request: Request) -> str | None:
    header = request.headers.get("content-type")
    return header.split(";")[0].strip().lower() if header else None


async def read_body(request: Request) -> bytes:
    """The raw body, 413 over ``EHR_MAX_BODY_BYTES`` (declared, or counted while it arrives)."""
    limit: int = request.app.state.services.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdecimal() and int(declared) > limit:
        raise ApiError("too-large", f"body of {declared} bytes is over the limit of {limit} bytes", "too-costly")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError("too-large", f"body is over the limit of {limit} bytes", "too-costly")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, media_types: frozenset[str] = JSON_MEDIA_TYPES) -> Any:
    """The parsed body: 415 for another media type, 413 over the size limit, 400 if it is not JSON."""
    kind = media_type(request)
    if kind is not None and kind not in media_types:
        raise ApiError(
            "unsupported-media-type",
            f"Content-Type {kind} is not supported here; send one of {', '.join(sorted(media_types))}"
            + (" (or application/fhir+xml)" if "application/fhir+json" in media_types else ""),
            code="not-supported",
        )
    body = await read_body(request)
    if not body.strip():
        raise InvalidResource([Issue("required", "the request body is empty; a FHIR resource is required")])
    try:
        value = fhir_json.loads(body)
    except fhir_json.JsonError as error:
        raise InvalidResource([Issue("structure", str(error))]) from None
    # Refuse absurd nesting before validation walks it, and a write already out of time.
    check_json_depth(value, request.app.state.services.settings.max_json_depth)
    check_write_deadline()
    return value


_ETAG = re.compile(r'^\s*(?:W/)?"?(\d+)"?\s*$')


def parse_if_match(value: str | None) -> int | None:
    """``If-Match: W/"3"`` → 3 (R4 §3.1.0.4.2 "Managing Resource Contention")."""
    if value is None:
        return None
    match = _ETAG.match(value)
    if match is None:
        raise InvalidResource([Issue("invalid", f'If-Match must be a version ETag like W/"3", got {value!r}')])
    return int(match.group(1))


def prefer_return(request: Request, default: str = "representation") -> str:
    """``Prefer: return=minimal|representation|OperationOutcome``; unknown values are ignored."""
    for part in request.headers.get("prefer", "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "return":
            value = value.strip().strip('"')
            if value in ("minimal", "representation", "OperationOutcome"):
                return value
    return default


def write_context(request: Request, interaction: str) -> WriteContext:
    """Who writes: the bearer token's claims; ``X-EHR-*`` headers only with auth disabled."""
    caller = getattr(request.state, "ehr_caller", None)  # Set by fhir_api.auth.AuthMiddleware
    if caller is not None:
        context: WriteContext = caller.context(request, interaction)
        return context
    headers = request.headers
    request_id = headers.get("x-request-id")
    context = WriteContext(
        institution=headers.get("x-ehr-institution", "unknown"),
        unit=headers.get("x-ehr-unit"),
        user=headers.get("x-ehr-user", "anonymous"),
        role=headers.get("x-ehr-role"),
        purpose=headers.get("x-ehr-purpose", "TREAT"),
        address=request.client.host if request.client else None,
        interaction=interaction,
    )
    if request_id:
        context = WriteContext(**{**context.__dict__, "request_id": request_id[:128]})
    return context
