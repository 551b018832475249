"""The FastAPI application: the FHIR router, the error mapping, and the services' lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ehr_core.settings import Settings
from fhir_api.audit_middleware import AuditMiddleware
from fhir_api.auth import AuthMiddleware
from fhir_api.bootstrap import open_services
from fhir_api.direct_routes import call_directly
from fhir_api.dispatch import index_routes
from fhir_api.errors import install_error_handlers
from fhir_api.formats import FormatNegotiation, XmlRequestBodies
from fhir_api.health import health_router
from fhir_api.limits import RequestLimits
from fhir_api.metrics import MetricsMiddleware, metrics_router
from fhir_api.oauth import router as oauth_router
from fhir_api.operations.export_jobs import ExportJobs
from fhir_api.operations.import_jobs import ImportJobs
from fhir_api.routes import adopt_routes, fhir_router
from fhir_api.search_registry import reindex_if_stale
from fhir_api.services import Services
from fhir_api.threads import request_threads
from fhir_api.web import install as install_web_view

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """Build the app; pass ``services`` to share an open store (tests), else it opens one at startup."""
    settings = settings or (services.settings if services else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        with request_threads():  # every hand-off of the FHIR API to a thread (fhir_api/threads.py)
            app.state.services = services or open_services(settings)
            if owned and (settings.projects_inline or not settings.uses_postgres):
                reindex_if_stale(app.state.services)  # this process projects: its index follows this registry
            app.state.exports = ExportJobs(app.state.services, app.state.services.settings.data_dir / "exports")
            app.state.imports = ImportJobs(app.state.services)
            try:
                yield
            finally:
                app.state.imports.close()  # running $import jobs stop between chunks, before the store closes
                if owned:
                    app.state.services.close()

    app = FastAPI(
        title="ehr-core FHIR R4 server",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    install_error_handlers(app)
    # An XML request body becomes JSON; innermost, so the body limits below apply to it as to JSON
    app.add_middleware(XmlRequestBodies, max_depth=settings.max_json_depth)
    # Body size, arrival time and request deadline; innermost, so its refusals are audited
    app.add_middleware(RequestLimits, settings=settings)
    # Bearer tokens (inside the audit middleware, so refusals are audited too)
    app.add_middleware(AuthMiddleware, settings=settings)
    # Accept/_format: 406, or FHIR JSON answers turned into XML (outside auth and limits: their refusals too)
    app.add_middleware(FormatNegotiation)
    app.add_middleware(AuditMiddleware)  # One audit entry per FHIR interaction
    app.add_middleware(MetricsMiddleware)  # Every answer is counted
    # SMART apps run in the browser on their own origin (SMART App Launch 2.x §App Launch): discovery, the
    # token endpoint and the FHIR API answer their fetches. Outermost, so a preflight (OPTIONS) is answered
    # before authentication; no credentials mode: the calls carry bearer tokens, never the web view's cookies.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["Location", "Content-Location", "ETag", "Last-Modified", "WWW-Authenticate"],
    )
    # One flat route list, each route taking the access policy's pending decision first: see adopt_routes
    adopt_routes(app.router, fhir_router(), decided=True)
    call_directly(app.router.routes)  # the FHIR routes' values passed without FastAPI's solving (direct_routes.py)
    app.include_router(metrics_router())  # GET /metrics (Prometheus text)
    app.include_router(health_router())  # GET /health: 503 while the audit log cannot be written
    app.include_router(oauth_router)  # The authorization server under /oauth (SMART App Launch, Backend Services)
    install_web_view(app)  # The web view under /web (pages over the FHIR API above)
    index_routes(app.router)  # each request tries only the routes its path can match (fhir_api/dispatch.py)
    return app
