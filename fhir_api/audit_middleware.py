"""Every FHIR interaction leaves exactly one audit entry, whatever its outcome.

A plain ASGI middleware around the whole FHIR surface: it watches the response go out (status, ETag,
Location, and the body up to :data:`BODY_LIMIT` to learn which resources, versions and patients were
concerned), then, before the answer's last body chunk goes out, submits one
:class:`~ehr_core.audit.AuditEntry` to the audit log's group-commit writer and waits for the commit: an
answer the client holds in full is an access on the record, whatever happens to the server next.
Failures and refusals (4xx, 5xx, exceptions) are audited the same way. Who, where and why come from
:func:`fhir_api.request.write_context`.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ehr_core.application import format_instant
from ehr_core.audit import AuditEntry, AuditWriter
from ehr_core.errors import Issue
from fhir_api.disclosure import disclosed, from_body
from fhir_api.errors import outcome_response
from fhir_api.request import write_context
from fhir_api.threads import in_thread
from projections.audit import patients_of

__all__ = ["AuditMiddleware", "classify"]

log = logging.getLogger(__name__)

BODY_LIMIT = 4 * 1024 * 1024
_VERSION = re.compile(r'^(?:W/)?"?(\d+)"?$')


def classify(method: str, path: str) -> tuple[str, str | None, list[str]]:
    """(interaction, operation, path parts) of a FHIR request path below ``/fhir``."""
    parts = [p for p in path[len("/fhir") :].split("/") if p]
    operation = next((p for p in parts if p.startswith("$")), None)
    if operation:
        return "operation", operation, parts
    if not parts:
        return ("transaction" if method == "POST" else "search-system"), None, parts
    if parts[0] == "metadata":
        return "capabilities", None, parts
    if parts[0] == "_history":
        return "history-system", None, parts
    if parts[0] == "_search":
        return "search-system", None, parts
    if len(parts) >= 3 and parts[2] != "_history":
        # Compartment search: R4's restful-interaction codes have no code of its own; it searches a type.
        return "search-type", None, parts
    if len(parts) == 1:
        kinds = {"GET": "search-type", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        return kinds.get(method, "search-type"), None, parts
    if parts[1] == "_history":
        return "history-type", None, parts
    if parts[1] == "_search":
        return "search-type", None, parts
    if len(parts) == 2:
        kinds = {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        return kinds.get(method, "read"), None, parts
    if len(parts) == 3:
        return "history-instance", None, parts
    return "vread", None, parts


def _compartment(services: Any, resource_type: str, resource_id: str) -> list[str]:
    with services.views.read() as tx:
        return patients_of(tx, resource_type, resource_id)


def _writer(scope: Scope) -> AuditWriter | None:
    services = getattr(scope["app"].state, "services", None)  # None before the lifespan opened them
    if services is None or not services.compliance.audit_enabled:
        return None
    writer: AuditWriter = services.compliance.audit_writer
    return writer


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/fhir"):
            await self.app(scope, receive, send)
            return
        writer = _writer(scope)
        if writer is not None and writer.unavailable():
            # Every access must be audited: while the audit log cannot be written (a full disk, a read-only
            # database), the record answers nothing rather than answer unaudited.
            message = "the audit log cannot be written right now, so no access is served; try again shortly"
            response = outcome_response(503, [Issue("transient", message)], {"Retry-After": "5"})
            await response(scope, receive, send)
            return
        state: dict[str, Any] = {"status": 500, "headers": {}, "body": [], "size": 0, "at": None}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = int(message["status"])
                state["at"] = datetime.now(UTC)
                state["headers"] = {
                    k.decode("latin-1").lower(): v.decode("latin-1")
                    for k, v in message.get("headers", [])
                    if k.lower() in (b"etag", b"location", b"content-type")
                }
            elif message["type"] == "http.response.body":
                if state["size"] <= BODY_LIMIT:
                    chunk = message.get("body", b"")
                    state["size"] += len(chunk)
                    state["body"].append(chunk)
                if not message.get("more_body", False):
                    # Every access audited, nothing lost on a crash: the answer is complete only once its
                    # audit entry is committed, so a client holding an answer can count on its AuditEvent
                    # even if the server is killed the next instant (tests/e2e/test_audit_crash.py).
                    state["audited"] = True
                    await self._audit(scope, state)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not state.get("audited"):  # no complete answer went out (an exception, a disconnect)
                await self._audit(scope, state)

    async def _audit(self, scope: Scope, state: dict[str, Any]) -> None:
        services = getattr(scope["app"].state, "services", None)  # None before the lifespan opened them
        if services is None or not services.compliance.audit_enabled:
            return
        compliance = services.compliance
        method, path = str(scope["method"]), str(scope["path"])
        interaction, operation, parts = classify(method, path)
        context = write_context(Request(scope), interaction)
        entities: list[str] = []
        patients: list[str] = []
        headers: dict[str, str] = state["headers"]
        status: int = state["status"]
        # Whether the answer is known from the request and its headers alone: a Patient read (or vread) that
        # succeeded answers that Patient at the version its ETag names (R4 §3.1.0.4.2: a read's ETag is the
        # versionId of the resource in the body), which is all the body would tell (see ``from_body``).
        named_by_path = False
        if len(parts) >= 2 and not parts[1].startswith(("_", "$")):
            resource_type, resource_id = parts[0], parts[1]
            version = _VERSION.match(headers.get("etag", "").strip())
            if version and status < 400:
                entities.append(f"{resource_type}/{resource_id}/_history/{version.group(1)}")
            else:
                entities.append(f"{resource_type}/{resource_id}")
            if resource_type == "Patient":
                patients.append(resource_id)
                named_by_path = version is not None and interaction in ("read", "vread")
        if status >= 400 and not patients and len(parts) >= 2 and not parts[1].startswith(("_", "$")):
            # A refused or failed request names no patient in its answer: the resource's compartment does.
            patients += await in_thread(_compartment, services, parts[0], parts[1])
        if named_by_path and status < 300:
            # Not decoded again: on the event loop, for every Patient read, to learn what the path and the
            # ETag already said.
            pass
        elif status < 300 and (handed := disclosed(scope.get("state", {}))) is not None:
            # The interaction named what it served from the rows it read (fhir_api/disclosure.py)
            entities += handed.entities
            patients += handed.patients
        elif status < 300 and state["size"] <= BODY_LIMIT and "json" in headers.get("content-type", ""):
            from_body(b"".join(state["body"]), entities, patients)
        elif status < 300 and method == "GET" and len(parts) >= 2 and parts[0] == "Binary":
            # A Binary read in its native form (a PDF...) names nobody in its body: its compartment, which
            # its securityContext decides (ehr_core/compartment.py), does.
            patients += await in_thread(_compartment, services, parts[0], parts[1])
        location = headers.get("location")
        if location and "/fhir/" in location:
            entities.append(location.split("/fhir/", 1)[1])
        if operation == "$everything" and parts and parts[0] == "Patient" and len(parts) >= 3:
            patients.append(parts[1])
        at: datetime = state["at"] or datetime.now(UTC)
        entry = AuditEntry(
            recorded=format_instant(at),
            interaction=interaction,
            method=method,
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            status=status,
            institution=context.institution,
            user=context.user,
            role=context.role,
            unit=context.unit,
            purpose=context.purpose,
            address=context.address,
            request_id=context.request_id,
            operation=operation,
            entities=list(dict.fromkeys(entities)),
            patients=list(dict.fromkeys(patients)),
            access=scope.get("state", {}).get("ehr_access"),  # set by search, history, $export
            reason=_break_glass_reason(scope) if context.purpose == "BTG" else _grant_reason(scope),
        )
        # The group commit takes every entry submitted meanwhile into one transaction: concurrent requests
        # share the wait, and a writer that falls behind holds its callers back (backpressure). The commit
        # settles this loop's waiters in one callback (``AuditWriter.committed``).
        try:
            await compliance.audit_writer.committed(entry)
        except Exception:  # the status is sent; the writer logged it and refuses the next requests (unavailable)
            log.warning("audit entry for %s %s not stored", method, path)


def _grant_reason(scope: Scope) -> str | None:
    """The grants (``Consent/id``, referral ``Task/id``) under which another institution's record was read."""
    grants = scope.get("state", {}).get("ehr_access_grants")
    return " ".join(grants)[:500] if grants else None


def _break_glass_reason(scope: Scope) -> str | None:
    """The reason the caller gave for breaking the glass (``X-EHR-Break-Glass``), as the review list keeps it."""
    reason = Request(scope).headers.get("x-ehr-break-glass", "").strip()
    return reason[:500] or None
