"""The ledger over HTTP: the public key, the latest signed head, and inclusion proofs.

- ``GET /fhir/$ledger-key``: the Ed25519 public key (PEM) that signs every block head;
- ``GET /fhir/$ledger-head``: the latest signed head of the clinical log's ledger (``?log=audit``: the audit log's);
- ``GET /fhir/$ledger-proof?event=N`` or ``?resource=Type/id&version=V``: an inclusion proof of one event
  (JSON, format ``ehr-ledger-proof/1``), checkable offline with ``ehr verify-proof``.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue, NotFound
from ehr_core.numbers import parse_int
from fhir_api.access import decide
from fhir_api.auth import caller_of
from fhir_api.errors import ApiError
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import operation_input
from fhir_api.request import ServicesDep
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.access import audit_entry_visible
from projections.ledger import Ledger
from projections.resources import ResourceViews

__all__ = ["router"]

router = APIRouter()


def _ledger(services: Services, log: str) -> Ledger:
    compliance = services.compliance
    if log not in ("record", "audit"):
        raise InvalidResource([Issue("invalid", f"log must be record or audit, got {log!r}")])
    return compliance.audit_ledger if log == "audit" else compliance.ledger


@router.get("/$ledger-key", summary="the ledger's public key (PEM)")
@router.post("/$ledger-key", summary="the ledger's public key (PEM; POST)")
async def ledger_key(request: Request, services: ServicesDep) -> Response:
    await operation_input(request, by_id("ledger-key"))  # it takes no parameter
    return Response(services.compliance.key.public_pem(), media_type="application/x-pem-file")


@router.get("/$ledger-head", summary="the latest signed block head")
@router.post("/$ledger-head", summary="the latest signed block head (POST)")
async def ledger_head(request: Request, services: ServicesDep) -> Response:
    given = await operation_input(request, by_id("ledger-head"))
    ledger = _ledger(services, given.first("log") or "record")
    found = await in_thread(ledger.latest_head)
    if found is None:
        raise NotFound("no block has been sealed yet")
    head, signature = found
    return Response(orjson.dumps({**head.as_json(), "signature": signature.hex()}), media_type="application/json")


def _notification_of(services: Services, resource: str, version: str) -> int:
    kind, _, rid = resource.partition("/")
    number = parse_int(version)
    if not rid or number is None:
        raise InvalidResource([Issue("invalid", "resource must be Type/id and version a number")])
    with services.views.read() as tx:
        found = ResourceViews.notification_of(tx, kind, rid, number)
    if found is None:
        raise NotFound(f"{resource}/_history/{version} is not known")
    return found


def _readable(services: Services, request: Request, event: int) -> None:
    """A proof says that a resource exists, which version this is and (in its bytes) which stream: the
    caller must be allowed to read that resource, by the same decision as a read of it (403 when denied;
    404, as a read answers, when there is no such resource). Break-the-glass does not open proofs: it is
    for care, and a proof is not needed for care."""
    caller = caller_of(request)
    if caller is None:  # authentication off (development): everything is visible, as for a read
        return
    with services.views.read() as tx:
        target = ResourceViews.written_at(tx, event)
        if target is None:  # not a resource's version (the identity index's own events): nobody's to prove
            raise NotFound(f"event #{event} is not a version of a resource")
        institution = str(caller.claims["institution"])
        if not decide(tx, institution, target=target).permitted:
            raise ApiError(
                "forbidden",
                f"{target[0]}/{target[1]} was recorded by another institution; {institution} may have a proof "
                "of it only where it may read it (the patient's active Consent)",
                code="forbidden",
            )


def _audit_readable(services: Services, request: Request, event: int) -> None:
    """An audit entry's proof carries the entry's stored bytes (who asked what, about whom): the caller may
    have it only where it may read that entry as an AuditEvent (:func:`projections.access.audit_clause`)."""
    caller = caller_of(request)
    if caller is None:
        return
    services.compliance.audit_views_current()
    with services.views.read() as tx:
        if not audit_entry_visible(tx, caller.viewer(), audit_nid=event):
            raise ApiError("forbidden", f"audit entry #{event} is not one your institution may read", code="forbidden")


@router.get("/$ledger-proof", summary="an inclusion proof of one event against a signed head")
@router.post("/$ledger-proof", summary="an inclusion proof of one event against a signed head (POST)")
async def ledger_proof(request: Request, services: ServicesDep) -> Response:
    given = await operation_input(request, by_id("ledger-proof"))
    resource, version, log = given.first("resource"), given.first("version"), given.first("log") or "record"
    ledger = _ledger(services, log)
    number = given.first("event")
    event = parse_int(number) if number is not None else None
    if number is not None and event is None:
        raise InvalidResource([Issue("invalid", f"event must be an event number, got {number!r}", "event")])
    if event is None:
        if resource is None or version is None:
            raise InvalidResource([Issue("required", "give event=N, or resource=Type/id and version=V")])
        event = await in_thread(_notification_of, services, resource, version)
    if log == "record":
        await in_thread(_readable, services, request, event)
    else:
        await in_thread(_audit_readable, services, request, event)
    proof = await in_thread(ledger.proof, event)
    if proof is None:
        raise NotFound(f"event #{event} is not in the ledger")
    return Response(orjson.dumps(proof, option=orjson.OPT_INDENT_2), media_type="application/json")
