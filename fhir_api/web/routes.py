"""The web view's pages (``/web/...``): server-rendered HTML over the FHIR API, in Spanish or English.

Every page gets its data through :class:`~fhir_api.web.fhir_client.InternalFhir` — the FHIR API itself,
with the signed-in user's token — so the pages obey exactly the API's access rules and every look at a
patient is in the audit log. Long lists are paged on the server; charts are inline SVG.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from fhir_api.web import account, audit_page, launch, record_page, search_page, sharing_page

__all__ = ["install"]


def install(app: FastAPI) -> None:
    """Mount the web view on the app (the FHIR API stays under ``/fhir``); ``/`` leads to it."""
    for pages in (account, search_page, record_page, audit_page, launch, sharing_page):
        app.include_router(pages.router)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/web/", status_code=307)
