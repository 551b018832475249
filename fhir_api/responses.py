"""FHIR responses: stored bytes out as they are, with the headers the spec asks for (R4 §3.1.0)."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime

from fastapi.responses import Response

from ehr_core.application import Written
from ehr_core.errors import Issue
from fhir_api.outcome import operation_outcome

__all__ = ["FHIR_JSON", "etag", "fhir_response", "http_date", "write_response"]

FHIR_JSON = "application/fhir+json; charset=utf-8"


def etag(version: int) -> str:
    return f'W/"{version}"'


def http_date(instant: str) -> str:
    """``Last-Modified`` (RFC 9110 IMF-fixdate) from a FHIR instant."""
    return format_datetime(datetime.fromisoformat(instant), usegmt=True)


def fhir_response(
    body: bytes | None,
    status: int = 200,
    *,
    version: int | None = None,
    last_updated: str | None = None,
    location: str | None = None,
) -> Response:
    headers: dict[str, str] = {}
    if version is not None:
        headers["ETag"] = etag(version)
    if last_updated:
        headers["Last-Modified"] = http_date(last_updated)
    if location is not None:
        headers["Location"] = location
    return Response(body if body is not None else b"", status_code=status, media_type=FHIR_JSON, headers=headers)


def write_response(written: Written, status: int, prefer: str, base: str) -> Response:
    """The answer to create/update: representation, nothing, or an OperationOutcome (R4 §3.1.0.9 Prefer)."""
    location = f"{base}/{written.resource_type}/{written.resource_id}/_history/{written.version}"
    if prefer == "minimal":
        body: bytes | None = None
    elif prefer == "OperationOutcome":
        verb = "created" if status == 201 else "updated"
        body = operation_outcome(
            [
                Issue(
                    "informational",
                    f"{written.resource_type}/{written.resource_id} {verb}",
                    severity="information",
                )
            ]
        )
    else:
        body = written.body
    return fhir_response(body, status, version=written.version, last_updated=written.last_updated, location=location)
