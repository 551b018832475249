"""For compliance: one person's audit trail (AuditEvent), changes (Provenance), break-the-glass accesses
highlighted, and the ledger's verification status."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.numbers import parse_int
from fhir_api.threads import in_thread
from fhir_api.web import compliance
from fhir_api.web.fhir_client import InternalFhir
from fhir_api.web.pages import failure, login_redirect, next_query, render_page, services_of, session_of_request

__all__ = ["router"]

router = APIRouter(prefix="/web", include_in_schema=False)


AUDIT_PAGE = 50


def _access_row(event: dict[str, Any]) -> dict[str, Any]:
    agents: list[dict[str, Any]] = event.get("agent") or []
    client: dict[str, Any] = next((a for a in agents if a.get("requestor")), {})
    organization: dict[str, Any] = next(
        (a for a in agents if not a.get("requestor") and (a.get("who") or {}).get("identifier")), {}
    )
    server: dict[str, Any] = next((a for a in agents if (a.get("network") or {}).get("type") == "5"), {})
    references = [
        str((e.get("what") or {}).get("reference"))
        for e in event.get("entity") or []
        if (e.get("what") or {}).get("reference")
    ]
    subtypes = [str(c.get("code")) for c in event.get("subtype") or []]
    return {
        "recorded": str(event.get("recorded", "")),
        "user": str(client.get("altId") or client.get("name") or ""),
        "role": ((client.get("role") or [{}])[0]).get("text", ""),
        "institution": str(((organization.get("who") or {}).get("identifier") or {}).get("value", "")),
        "unit": str(((client.get("location") or {}).get("identifier") or {}).get("value", "")),
        "address": str((client.get("network") or {}).get("address", "")),
        "purpose": ",".join(
            str(c.get("code")) for p in client.get("purposeOfUse") or [] for c in (p.get("coding") or [])
        ),
        "what": " ".join(subtypes),
        "path": str((server.get("network") or {}).get("address", "")),
        "references": references,
        "action": event.get("action", ""),
        "outcome": str(event.get("outcome", "")),
        "outcome_text": event.get("outcomeDesc", ""),
        "break_glass": None,
    }


def _change_row(provenance: dict[str, Any]) -> dict[str, Any]:
    agent = (provenance.get("agent") or [{}])[0]
    who = agent.get("who") or {}
    on_behalf = agent.get("onBehalfOf") or {}
    return {
        "recorded": str(provenance.get("recorded", "")),
        "targets": [str(t.get("reference")) for t in provenance.get("target") or []],
        "activity": ((provenance.get("activity") or {}).get("coding") or [{}])[0].get("code", ""),
        "user": str(who.get("display") or (who.get("identifier") or {}).get("value") or ""),
        "institution": str(on_behalf.get("display") or (on_behalf.get("identifier") or {}).get("value") or ""),
        "unit": str(
            ((provenance.get("location") or {}).get("identifier") or {}).get("value")
            or (provenance.get("location") or {}).get("display")
            or ""
        ),
        "reason": ",".join(str(c.get("code")) for r in provenance.get("reason") or [] for c in (r.get("coding") or [])),
    }


def _cursor(query: str | None, name: str) -> str | None:
    if not query:
        return None
    return dict(parse_qsl(query)).get(name)


@router.get("/patients/{patient_id}/audit")
async def audit_page(
    request: Request,
    patient_id: str,
    before: str | None = None,
    changes_before: str | None = None,
    verify: str | None = None,
) -> Response:
    session = session_of_request(request)
    if not session.signed_in:
        return login_redirect(request)
    fhir = InternalFhir(request, session)
    reason = session.reason_for([patient_id])
    person = await fhir.get(f"/fhir/Patient/{patient_id}/$person", break_glass=reason)
    records = [patient_id]
    if person.ok:
        for link in (person.json() or {}).get("link") or []:
            record = str((link.get("target") or {}).get("reference", "")).removeprefix("Patient/")
            if record and record not in records:
                records.append(record)
    patients = ",".join(records)
    access_params = [("patient", patients), ("_count", str(AUDIT_PAGE))]
    change_params = [("patient", patients), ("_count", str(AUDIT_PAGE))]
    if before and parse_int(before, signed=True) is not None:
        access_params.append(("_page_before", before))
    if changes_before and parse_int(changes_before, signed=True) is not None:
        change_params.append(("_page_before", changes_before))
    accesses, changes, record_head, audit_head = await asyncio.gather(
        fhir.get("/fhir/AuditEvent", access_params),
        fhir.get("/fhir/Provenance", change_params),
        fhir.get("/fhir/$ledger-head"),
        fhir.get("/fhir/$ledger-head", {"log": "audit"}),
    )
    if not accesses.ok:
        return failure(request, session, accesses, patient_id)
    services = services_of(request)
    decisions = await in_thread(compliance.break_glass_for, services, records)
    access_bundle = accesses.json() or {}
    rows = [_access_row(e["resource"]) for e in access_bundle.get("entry", []) if "resource" in e]
    for row in rows:
        row["break_glass"] = compliance.is_break_glass(row, decisions)
    change_bundle = changes.json() if changes.ok else {}
    change_rows = [_change_row(e["resource"]) for e in (change_bundle or {}).get("entry", []) if "resource" in e]
    ledger_allowed = record_head.status != 403
    ledgers = []
    if ledger_allowed:
        fresh = verify == "now"
        for name, head in (("ledger", record_head), ("audit_ledger", audit_head)):
            status = await in_thread(compliance.ledger_status, services, name, fresh)
            checked = datetime.fromtimestamp(status.checked_at, UTC).isoformat(timespec="seconds")
            ledgers.append(
                {"name": name, "status": status, "head": head.json() if head.ok else None, "checked": checked}
            )
    return render_page(
        request,
        session,
        "audit.html",
        patient_id=patient_id,
        records=records,
        rows=rows,
        decisions=decisions,
        more=_cursor(next_query(access_bundle), "_page_before"),
        change_rows=change_rows,
        changes_problem=None if changes.ok else changes.problem(),
        more_changes=_cursor(next_query(change_bundle or {}), "_page_before"),
        ledgers=ledgers,
        ledger_allowed=ledger_allowed,
        before=before,
        break_glass=reason,
        now=datetime.now(UTC),
    )
