"""The ledger over HTTP (issue 6): the public key, the latest signed head, and inclusion proofs.

- ``GET /fhir/$ledger-key``: the Ed25519 public key (PEM) that signs every block head;
- ``GET /fhir/$ledger-head``: the latest signed head of the clinical log's ledger (``?log=audit``: the audit log's);
- ``GET /fhir/$ledger-proof?event=N`` or ``?resource=Type/id&version=V``: an inclusion proof of one event
  (JSON, format ``ehr-ledger-proof/1``), checkable offline with ``ehr verify-proof``.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue, NotFound
from ehr_core.numbers import parse_int
from fhir_api.compliance import Compliance
from fhir_api.request import ServicesDep
from fhir_api.services import Services
from projections.ledger import Ledger

__all__ = ["router"]

router = APIRouter()


def _compliance(services: Services) -> Compliance:
    if services.compliance is None:
        raise NotFound("the ledger is not open on this server")
    return services.compliance


def _ledger(services: Services, log: str) -> Ledger:
    compliance = _compliance(services)
    if log not in ("record", "audit"):
        raise InvalidResource([Issue("invalid", f"log must be record or audit, got {log!r}")])
    return compliance.audit_ledger if log == "audit" else compliance.ledger


@router.get("/$ledger-key", summary="the ledger's public key (PEM)")
def ledger_key(services: ServicesDep) -> Response:
    return Response(_compliance(services).key.public_pem(), media_type="application/x-pem-file")


@router.get("/$ledger-head", summary="the latest signed block head")
def ledger_head(services: ServicesDep, log: str = "record") -> Response:
    found = _ledger(services, log).latest_head()
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
        row = tx.execute(
            "SELECT notification_id FROM resource_history WHERE resource_type = ? AND resource_id = ? AND version = ?",
            (kind, rid, number),
        ).fetchone()
    if row is None:
        raise NotFound(f"{resource}/_history/{version} is not known")
    return int(row[0])


@router.get("/$ledger-proof", summary="an inclusion proof of one event against a signed head")
async def ledger_proof(
    services: ServicesDep,
    event: int | None = None,
    resource: str | None = None,
    version: str | None = None,
    log: str = "record",
) -> Response:
    ledger = _ledger(services, log)
    if event is None:
        if resource is None or version is None:
            raise InvalidResource([Issue("required", "give event=N, or resource=Type/id and version=V")])
        event = await run_in_threadpool(_notification_of, services, resource, version)
    proof = await run_in_threadpool(ledger.proof, event)
    if proof is None:
        raise NotFound(f"event #{event} is not in the ledger")
    return Response(orjson.dumps(proof, option=orjson.OPT_INDENT_2), media_type="application/json")
