"""Care that moves between institutions, in the web view: refer a patient from the record, the referral inbox
(accept, reject, complete with the counter-referral), and the patient's consent to share (record, revoke).

Every action is a FHIR write through :class:`~fhir_api.web.fhir_client.InternalFhir` as the signed-in user —
the same application path, write policy (:mod:`ehr_core.referrals`: only the receiving institution accepts)
and audit log as any API client. Forms post only from our own pages (:func:`~fhir_api.web.pages.same_origin`
with the SameSite=Strict session cookie), like every form of the web view.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from fhir_api.web.consents import SENSITIVE, consent_resource
from fhir_api.web.fhir_client import FhirAnswer, InternalFhir
from fhir_api.web.pages import FHIR_ID, failure, login_redirect, render_page, same_origin, session_of_request
from fhir_api.web.record import institution_colour
from fhir_api.web.referrals import PRIORITIES, completed, counter_referral, moved, referral_resources
from fhir_api.web.sharing import inbox, units

__all__ = ["router"]

router = APIRouter(prefix="/web", include_in_schema=False)

#: What the receiving unit may answer from the inbox (R4 task-status; :mod:`ehr_core.referrals` decides).
ANSWERS = ("accepted", "rejected")


def _transaction(entries: list[dict[str, object]]) -> dict[str, object]:
    for entry in entries:
        resource = entry["resource"]
        assert isinstance(resource, dict)
        entry["request"] = {"method": "POST", "url": resource["resourceType"]}
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _created(answer: FhirAnswer) -> list[str]:
    """``Type/id`` of each entry a transaction created, in order (R4 §3.1.0.11.2: the response's
    ``location``, ``[base/]Type/id/_history/vid``)."""
    found = []
    for entry in (answer.json() or {}).get("entry", []):
        parts = str((entry.get("response") or {}).get("location", "")).split("/")
        end = parts.index("_history") if "_history" in parts else len(parts)
        found.append("/".join(parts[end - 2 : end]))
    return found


def _date(value: str) -> str:
    """A form's date (``YYYY-MM-DD``), or empty when it is not one."""
    try:
        return date.fromisoformat(value.strip()).isoformat() if value.strip() else ""
    except ValueError:
        return ""


@router.post("/patients/{patient_id}/referrals")
async def refer(
    request: Request,
    patient_id: str,
    record: str = Form(...),
    unit: str = Form(...),
    reason: str = Form(...),
    service: str = Form(""),
    priority: str = Form("routine"),
) -> Response:
    """A referral from the signed-in unit: ServiceRequest + Task in one transaction, as the clinician."""
    session = session_of_request(request)
    back = RedirectResponse(f"/web/patients/{patient_id}", status_code=303)
    if not same_origin(request) or not FHIR_ID.match(record) or not reason.strip() or priority not in PRIORITIES:
        return back
    fhir = InternalFhir(request, session)
    directory = await units(fhir)
    origin, target = directory.get(session.who.get("unit", "")), directory.get(unit)
    if origin is None or target is None:
        return back
    entries = referral_resources(record, origin, target, service.strip(), reason.strip(), priority, datetime.now(UTC))
    answer = await fhir.post("/fhir", _transaction(entries), break_glass=session.reason_for([patient_id]))
    if not answer.ok:
        return failure(request, session, answer)
    return RedirectResponse(f"/web/patients/{patient_id}?done=referral", status_code=303)


@router.get("/referrals")
async def referrals_page(request: Request, scope: str = "unit", done: str | None = None) -> Response:
    session = session_of_request(request)
    if not session.signed_in:
        return login_redirect(request)
    found = await inbox(InternalFhir(request, session), session, scope)
    return render_page(request, session, "referrals.html", inbox=found, done=done, colour=institution_colour)


async def _task(fhir: InternalFhir, task_id: str) -> tuple[dict[str, object] | None, FhirAnswer]:
    answer = await fhir.get(f"/fhir/Task/{task_id}")
    document = answer.json() if answer.ok else None
    return (document if isinstance(document, dict) else None), answer


async def _put(fhir: InternalFhir, body: dict[str, object]) -> FhirAnswer:
    return await fhir.call("PUT", f"/fhir/Task/{body['id']}", None, body)


@router.post("/referrals/{task_id}/answer")
async def answer_referral(
    request: Request, task_id: str, status: str = Form(...), reason: str = Form(""), scope: str = Form("unit")
) -> Response:
    """The receiving unit accepts or rejects (with why) a referral: the Task's next version."""
    session = session_of_request(request)
    inbox_url = f"/web/referrals?scope={'unit' if scope == 'unit' else 'institution'}"
    if not same_origin(request) or not FHIR_ID.match(task_id) or status not in ANSWERS:
        return RedirectResponse(inbox_url, status_code=303)
    if status == "rejected" and not reason.strip():
        return RedirectResponse(inbox_url, status_code=303)
    fhir = InternalFhir(request, session)
    task, answer = await _task(fhir, task_id)
    if task is None:
        return failure(request, session, answer)
    answer = await _put(fhir, moved(task, status, datetime.now(UTC), reason.strip() or None))
    if not answer.ok:
        return failure(request, session, answer)
    return RedirectResponse(f"{inbox_url}&done={status}", status_code=303)


@router.post("/referrals/{task_id}/complete")
async def complete_referral(
    request: Request, task_id: str, note: str = Form(...), scope: str = Form("unit")
) -> Response:
    """The receiving unit records the encounter and the counter-referral note, then completes the Task
    (``in-progress`` first when it was only accepted: R4 task.html's state machine), each step a write."""
    session = session_of_request(request)
    inbox_url = f"/web/referrals?scope={'unit' if scope == 'unit' else 'institution'}"
    if not same_origin(request) or not FHIR_ID.match(task_id) or not note.strip():
        return RedirectResponse(inbox_url, status_code=303)
    fhir = InternalFhir(request, session)
    task, answer = await _task(fhir, task_id)
    unit = (await units(fhir)).get(session.who.get("unit", ""))
    if task is None:
        return failure(request, session, answer)
    if unit is None:
        return RedirectResponse(inbox_url, status_code=303)
    now = datetime.now(UTC)
    if task.get("status") == "accepted":
        answer = await _put(fhir, moved(task, "in-progress", now))
        if not answer.ok:
            return failure(request, session, answer)
        task, answer = await _task(fhir, task_id)
        if task is None:
            return failure(request, session, answer)
    answer = await fhir.post("/fhir", _transaction(counter_referral(task, unit, note.strip(), now)))
    if not answer.ok:
        return failure(request, session, answer)
    encounter, document = _created(answer)
    answer = await _put(fhir, completed(task, encounter, document, note.strip(), now))
    if not answer.ok:
        return failure(request, session, answer)
    return RedirectResponse(f"{inbox_url}&done=completed", status_code=303)


@router.post("/patients/{patient_id}/consents")
async def record_consent(request: Request, patient_id: str) -> Response:
    """The patient's consent to share the institution's record: with every public institution or the named
    ones, for a period, keeping the chosen sensitive categories inside the institution."""
    session = session_of_request(request)
    form = await request.form()
    record = str(form.get("record") or "")
    if not same_origin(request) or not FHIR_ID.match(record):
        return RedirectResponse(f"/web/patients/{patient_id}", status_code=303)
    named = [str(v) for v in form.getlist("institution") if str(v).strip()]
    everyone = form.get("share") != "named"
    if not everyone and not named:
        return RedirectResponse(f"/web/patients/{patient_id}", status_code=303)
    denied = [str(v) for v in form.getlist("deny") if str(v) in SENSITIVE]
    consent = consent_resource(
        record,
        [] if everyone else named,
        _date(str(form.get("start") or "")),
        _date(str(form.get("end") or "")),
        denied,
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    answer = await InternalFhir(request, session).post(
        "/fhir/Consent", consent, break_glass=session.reason_for([patient_id])
    )
    if not answer.ok:
        return failure(request, session, answer)
    return RedirectResponse(f"/web/patients/{patient_id}?done=consent", status_code=303)


@router.post("/patients/{patient_id}/consents/{consent_id}/revoke")
async def revoke_consent(request: Request, patient_id: str, consent_id: str) -> Response:
    """Revocation: the Consent's next version ``inactive``; its grants end at once on every read path."""
    session = session_of_request(request)
    if not same_origin(request) or not FHIR_ID.match(consent_id):
        return RedirectResponse(f"/web/patients/{patient_id}", status_code=303)
    fhir = InternalFhir(request, session)
    answer = await fhir.get(f"/fhir/Consent/{consent_id}")
    consent = answer.json() if answer.ok else None
    if not isinstance(consent, dict):
        return failure(request, session, answer)
    body = {k: v for k, v in consent.items() if k != "meta"} | {"status": "inactive"}
    answer = await fhir.call("PUT", f"/fhir/Consent/{consent_id}", None, body)
    if not answer.ok:
        return failure(request, session, answer)
    return RedirectResponse(f"/web/patients/{patient_id}?done=revoked", status_code=303)
