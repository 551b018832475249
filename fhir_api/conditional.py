"""Conditional create, update, patch and delete (R4 §3.1.0.8, §3.1.0.4.3, §3.1.0.6.1), and conditional
references in any write (R4 http.html#trules "Conditional References", see ``ehr_core.references``).

Each conditional interaction is run as a one-entry transaction: the domain's Bundle processing already
knows how to match a search, refuse several matches with 412, and create, update, patch or delete the one
it found. A plain create, update or patch resolves its conditional references with :func:`references_of`,
matching among what the caller may read, exactly as a conditional interaction matches.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from ehr_core.bundles import REST_REQUEST, Entry, EntryResult, run_transaction
from ehr_core.context import WriteContext
from ehr_core.errors import InvalidResource, Issue
from ehr_core.references import ConditionalReferences
from fhir_api.auth import viewer_of
from fhir_api.resolver import ViewResolver
from fhir_api.responses import etag, write_response
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.access import Viewer

__all__ = ["references_of", "resolve_references", "run_conditional"]


def references_of(services: Services, request: Request) -> ConditionalReferences:
    """Resolves conditional references for this caller: only resources it may read can match."""
    return ConditionalReferences(ViewResolver(services, viewer_of(request)))


async def resolve_references(services: Services, request: Request, resource: Any) -> Any:
    """``resource`` with its conditional references resolved (422 none, 412 several), off the event loop."""
    return await in_thread(references_of(services, request).rewrite, resource)


def _run(services: Services, entry: Entry, context: WriteContext, viewer: Viewer | None) -> EntryResult:
    result = run_transaction(services.application, [entry], context, ViewResolver(services, viewer))[0]
    services.wait_until_visible(result.written)
    return result


async def run_conditional(
    request: Request,
    services: Services,
    method: str,
    url: str,
    resource: Any,
    context: WriteContext,
    prefer: str,
    base: str,
    if_none_exist: str | None = None,
) -> Response:
    if method != "POST" and not request.url.query:
        raise InvalidResource([Issue("invalid", f"a conditional {method} needs search parameters in the URL")])
    entry = Entry(REST_REQUEST, method, url, None, resource, request.headers.get("if-match"), None, if_none_exist)
    result = await in_thread(_run, services, entry, context, viewer_of(request))
    status = int(result.status.split()[0])
    written = result.written
    if method == "DELETE" or written is None or written.body is None:
        headers = {"ETag": etag(written.version)} if written is not None and written.version else {}
        return Response(status_code=204, headers=headers)
    return write_response(written, status, prefer, base)
