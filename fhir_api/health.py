"""``GET /health``, and the same facts as ``/metrics`` gauges: can the server write what it must write?

Every access is audited, so while the audit log cannot be written (a full disk, a read-only database) the
FHIR surface answers 503 to everything (fhir_api/audit_middleware.py); one request in
``EHR_AUDIT_PROBE_SECONDS`` goes through as a probe, and the first audit commit that succeeds reopens
access. Operators (and tests waiting for recovery instead of sleeping) see that state here: ``/health``
answers 200 while every store is writable and 503 otherwise, so a load balancer can drain the instance.
Like ``/metrics`` it is outside ``/fhir``, needs no token and names no patient, user or resource.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fhir_api.services import Services

__all__ = ["StoreHealth", "health_router", "store_states"]


def _instant(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def store_states(services: Services) -> dict[str, dict[str, Any]]:
    """Per store that refuses access when it cannot be written: whether it is writable, and since when not.

    Times are seconds since the epoch (None: never). Only the audit log is tracked: a failed write to the
    clinical log or the views fails that request alone (503), the next one tries again.
    """
    compliance = services.compliance
    if not compliance.audit_enabled:
        return {}
    writer = compliance.audit_writer
    return {
        "audit": {
            "writable": writer.writable,
            "unwritable_since": writer.unwritable_since,
            "last_probe": writer.probed_at,
            "last_commit": writer.committed_at,
        }
    }


class StoreHealth(Collector):
    """``ehr_store_writable{store}`` (1/0) and the times of the last probe and the last commit."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Any]:
        writable = GaugeMetricFamily(
            "ehr_store_writable", "1 while the store can be written, 0 while access is refused", labels=["store"]
        )
        probe = GaugeMetricFamily(
            "ehr_store_last_probe_timestamp_seconds",
            "When a request last went through as a probe of an unwritable store (0: never)",
            labels=["store"],
        )
        commit = GaugeMetricFamily(
            "ehr_store_last_commit_timestamp_seconds", "When the store last committed (0: never)", labels=["store"]
        )
        for store, state in store_states(self.services).items():
            writable.add_metric([store], 1.0 if state["writable"] else 0.0)
            probe.add_metric([store], state["last_probe"] or 0.0)
            commit.add_metric([store], state["last_commit"] or 0.0)
        yield writable
        yield probe
        yield commit


def health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health", include_in_schema=False)
    def health(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        stores = {
            store: {
                "writable": state["writable"],
                "unwritableSince": _instant(state["unwritable_since"]),
                "lastProbe": _instant(state["last_probe"]),
                "lastCommit": _instant(state["last_commit"]),
            }
            for store, state in store_states(services).items()
        }
        healthy = all(state["writable"] for state in stores.values())
        body = {"status": "pass" if healthy else "fail", "stores": stores}
        return JSONResponse(body, status_code=200 if healthy else 503, headers={"Cache-Control": "no-store"})

    return router
