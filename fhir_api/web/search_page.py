"""Patient search: one box for a name (accent-insensitive), a CURP, an NSS or an institution's record number.

The search itself is the API's ``Patient`` search (the projections' search index), never a second one.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fhir_api.web.fhir_client import InternalFhir
from fhir_api.web.pages import failure, login_redirect, next_query, patient_row, render_page, session_of_request
from fhir_api.web.record import CURP_SYSTEM, institution_colour

__all__ = ["router", "search_parameters"]

router = APIRouter(prefix="/web", include_in_schema=False)


_CURP = re.compile(r"^[A-Z]{4}\d{6}[HMX][A-Z]{5}[A-Z0-9]\d$")


def search_parameters(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(how, FHIR search parameters) for what was typed: a CURP, an identifier (NSS, record number), a name."""
    value = text.strip()
    upper = value.upper()
    if _CURP.match(upper):
        return "curp", [("identifier", f"{CURP_SYSTEM}|{upper}")]
    if " " not in value and any(c.isdigit() for c in value):
        return "identifier", [("identifier", value)]
    return "name", [("name", value)]


@router.get("/")
async def search_page(request: Request, q: str = "", cursor: str | None = None) -> Response:
    session = session_of_request(request)
    if not session.signed_in:
        return login_redirect(request)
    how, rows, more = None, None, None
    if q.strip():
        how, params = search_parameters(q)
        query = cursor if cursor else urlencode([*params, ("_count", "20")])
        answer = await InternalFhir(request, session).get("/fhir/Patient", query)
        if not answer.ok:
            return failure(request, session, answer)
        bundle = answer.json() or {}
        rows = [
            patient_row(e["resource"])
            for e in bundle.get("entry", [])
            if isinstance(e, dict) and (e.get("resource") or {}).get("resourceType") == "Patient"
        ]
        more = next_query(bundle)
    return render_page(request, session, "search.html", q=q, how=how, rows=rows, more=more, colour=institution_colour)
