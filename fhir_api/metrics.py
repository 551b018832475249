"""``GET /metrics``: Prometheus text — request rates and latencies, projection positions and lag.

Served outside ``/fhir`` and without a token, like any scrape endpoint on an internal port: it names no
patient, user or resource, only counts. The process collector of the Prometheus client adds RSS and CPU.
Positions and lag are read from the database at scrape time (every projection's tracking row and every
log's head), so each API process reports the deployment's truth, including what an ``ehr project`` worker
applied.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_api.health import StoreHealth
from fhir_api.registry import log_of
from fhir_api.services import Services
from projections.projector import quarantine_counts, tracking_positions

__all__ = ["MetricsMiddleware", "metrics_router"]

REQUESTS = Counter("ehr_http_requests", "HTTP requests answered, by method and status", ["method", "status"])
LATENCY = Histogram(
    "ehr_http_request_seconds",
    "Time from request to the last byte of the answer, by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


class MetricsMiddleware:
    """Counts every HTTP answer (a pure ASGI middleware: no body buffering, a few microseconds a request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = str(scope.get("method", "GET"))
            REQUESTS.labels(method, str(status)).inc()
            LATENCY.labels(method).observe(time.perf_counter() - started)


class _Positions(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Any]:
        position = GaugeMetricFamily(
            "ehr_projection_position", "Last notification id applied, by projection", labels=["projection"]
        )
        lag = GaugeMetricFamily(
            "ehr_projection_lag_events",
            "Notifications recorded but not yet applied, by projection",
            labels=["projection"],
        )
        quarantined = GaugeMetricFamily(
            "ehr_projection_quarantined_events",
            "Events a projection skipped because applying them failed (ehr verify; ehr project --retry-quarantined)",
            labels=["projection"],
        )
        with self.services.views.read() as tx:
            rows = tracking_positions(tx)
            skipped = quarantine_counts(tx)
        heads = {
            "ehr": self.services.application.recorder.max_notification_id() or 0,
            "audit": self.services.compliance.audit_log.recorder.max_notification_id() or 0,
        }
        head = GaugeMetricFamily("ehr_log_head", "Last notification id recorded, by log", labels=["log"])
        for log, value in heads.items():
            head.add_metric([log], value)
        for name, value in sorted(rows.items()):
            followed = heads[log_of(str(name))]  # the log its projection follows (fhir_api/registry.py)
            position.add_metric([str(name)], int(value))
            lag.add_metric([str(name)], max(0, followed - int(value)))
        for name in sorted(rows):
            quarantined.add_metric([str(name)], int(skipped.get(name, 0)))
        yield head
        yield position
        yield lag
        yield quarantined


def metrics_router() -> APIRouter:
    router = APIRouter()
    registries: dict[int, CollectorRegistry] = {}

    @router.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        services: Services = request.app.state.services
        registry = registries.get(id(services))
        if registry is None:  # one per opened store: the app's positions, beside the process-wide counters
            registry = registries[id(services)] = CollectorRegistry()
            registry.register(_Positions(services))
            registry.register(StoreHealth(services))  # ehr_store_writable, its last probe and commit
        body = generate_latest(REGISTRY) + generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
