"""Referral and counter-referral (referencia y contrarreferencia) for the web view: the FHIR resources a
referral form writes, and the inbox arranged from the Tasks the API serves. Pure functions (no I/O).

A referral is what :mod:`ehr_core.referrals` defines: a ``ServiceRequest`` (intent ``order``, category SNOMED
CT 3457005, ``performer`` the receiving institution, ``requester`` the referring unit by CLUES) and the
``Task`` tracking it (``owner`` the receiving institution, ``location`` the receiving unit; R4 task.html
"Task.location: principal physical location where this task is performed"). The receiving side's answer
travels in the Task, which the referring institution recorded and so always reads: its ``status``,
``statusReason`` (why it was rejected) and ``output`` (the receiving Encounter, the counter-referral
DocumentReference and the note's text — the referral grants the *receiver* read access, not the referrer,
so the note's text is also carried in the Task for the unit that asked).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ehr_core.referrals import INSTITUTION_SYSTEM, REFERRAL_CATEGORY
from ehr_core.spec.required_codes import VALUE_SETS
from fhir_api.web.record import CLUES_SYSTEM, LOINC

__all__ = [
    "NOTE_OUTPUT",
    "OPEN",
    "PRIORITIES",
    "Referral",
    "Unit",
    "completed",
    "counter_referral",
    "institution_reference",
    "moved",
    "referral_of",
    "referral_resources",
]

#: How many days a receiving unit has to answer a referral of each priority before it shows as overdue
#: (the unit's service level; R4 request-priority gives the order, not the days).
DUE_DAYS = {"stat": 1, "asap": 3, "urgent": 7, "routine": 30}
#: R4 ValueSet request-priority (required binding of ServiceRequest.priority), most urgent first.
PRIORITIES = tuple(sorted(VALUE_SETS["http://hl7.org/fhir/ValueSet/request-priority|4.0.1"], key=DUE_DAYS.__getitem__))
#: Task.status values (R4 task-status) of a referral still waiting on the receiving unit.
OPEN = frozenset({"requested", "received", "accepted", "in-progress", "on-hold", "ready"})
#: LOINC 57133-1 "Referral note": the counter-referral's DocumentReference.type.
REFERRAL_NOTE = (LOINC, "57133-1", "Referral note")
#: Task.output.type.text of the outputs a completed referral carries.
ENCOUNTER_OUTPUT = "Encuentro de atención"
NOTE_OUTPUT = "Nota de contrarreferencia"


@dataclass(frozen=True)
class Unit:
    """A health establishment (a ``Location`` with a CLUES) and the institution that manages it."""

    location_id: str
    clues: str
    name: str
    institution: str


def institution_reference(institution: str) -> dict[str, Any]:
    """The institution as ``Task.owner`` / ``ServiceRequest.performer`` name it (by identifier, which is what
    :func:`ehr_core.referrals.institution_named` reads, and the Organization of that name)."""
    return {
        "reference": f"Organization/{institution.lower()}",
        "identifier": {"system": INSTITUTION_SYSTEM, "value": institution},
        "display": institution,
    }


def _unit_reference(unit: Unit) -> dict[str, Any]:
    return {"identifier": {"system": CLUES_SYSTEM, "value": unit.clues}, "display": unit.name}


def referral_resources(
    patient: str, origin: Unit, target: Unit, service: str, reason: str, priority: str, now: datetime
) -> list[dict[str, Any]]:
    """The ServiceRequest and its Task, to be written in one transaction (the Task's ``focus`` is the
    ServiceRequest's ``fullUrl``); the Task is due after :data:`DUE_DAYS` of its priority."""
    stamp = now.isoformat(timespec="seconds")
    request_url = "urn:uuid:" + uuid.uuid4().hex
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "category": [
            {"coding": [{"system": REFERRAL_CATEGORY[0], "code": REFERRAL_CATEGORY[1], "display": "Patient referral"}]}
        ],
        "priority": priority,
        "code": {"text": service or reason},
        "subject": {"reference": f"Patient/{patient}"},
        "authoredOn": stamp,
        "requester": _unit_reference(origin),
        "performer": [institution_reference(target.institution)],
        "locationReference": [{"reference": f"Location/{target.location_id}", "display": target.name}],
        "reasonCode": [{"text": reason}],
    }
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "priority": priority,
        "focus": {"reference": request_url},
        "for": {"reference": f"Patient/{patient}"},
        "authoredOn": stamp,
        "lastModified": stamp,
        "requester": _unit_reference(origin),
        "owner": institution_reference(target.institution),
        "location": {"reference": f"Location/{target.location_id}", "display": target.name},
        "reasonCode": {"text": reason},
        "restriction": {"period": {"end": (now + timedelta(days=DUE_DAYS[priority])).isoformat(timespec="seconds")}},
    }
    return [{"fullUrl": request_url, "resource": request}, {"resource": task}]


def counter_referral(task: dict[str, Any], unit: Unit, note: str, now: datetime) -> list[dict[str, Any]]:
    """The receiving unit's Encounter and its counter-referral note (DocumentReference, LOINC 57133-1), as
    transaction entries; :func:`completed` then points the Task's ``output`` at them."""
    stamp = now.isoformat(timespec="seconds")
    patient = task["for"]
    encounter_url = "urn:uuid:" + uuid.uuid4().hex
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": patient,
        "basedOn": [task["focus"]] if str(task["focus"].get("reference", "")).startswith("ServiceRequest/") else [],
        "period": {"start": stamp, "end": stamp},
        "location": [{"location": {"reference": f"Location/{unit.location_id}", "display": unit.name}}],
        "serviceProvider": {"reference": f"Organization/{unit.institution.lower()}"},
    }
    document = {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {
            "coding": [{"system": REFERRAL_NOTE[0], "code": REFERRAL_NOTE[1], "display": REFERRAL_NOTE[2]}],
            "text": NOTE_OUTPUT,
        },
        "subject": patient,
        "date": stamp,
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "title": NOTE_OUTPUT,
                    "data": base64.b64encode(note.encode()).decode(),
                }
            }
        ],
        "context": {"encounter": [{"reference": encounter_url}]},
    }
    return [{"fullUrl": encounter_url, "resource": encounter}, {"resource": document}]


def completed(task: dict[str, Any], encounter: str, document: str, note: str, now: datetime) -> dict[str, Any]:
    """The Task completed with its outputs: the Encounter, the note (a reference and its text)."""
    outputs = [
        {"type": {"text": ENCOUNTER_OUTPUT}, "valueReference": {"reference": encounter}},
        {"type": {"text": NOTE_OUTPUT}, "valueReference": {"reference": document}},
        {"type": {"text": NOTE_OUTPUT}, "valueString": note},
    ]
    return moved(task, "completed", now) | {"output": outputs}


def moved(task: dict[str, Any], status: str, now: datetime, reason: str | None = None) -> dict[str, Any]:
    """The Task as the next PUT sends it: the new status (and why, for a rejection), server meta left out."""
    body = {k: v for k, v in task.items() if k != "meta"}
    body["status"] = status
    body["lastModified"] = now.isoformat(timespec="seconds")
    if reason:
        body["statusReason"] = {"text": reason}
    return body


@dataclass
class Referral:
    """One referral as the inbox shows it."""

    task_id: str
    status: str
    priority: str
    patient: str
    authored: str
    due: str
    overdue: bool
    receiver: str
    receiving_unit: str
    receiving_unit_name: str
    referring_unit: str
    referring_unit_name: str
    service: str
    reason: str
    answer: str = ""
    note: str = ""
    outputs: list[str] = field(default_factory=list)


def _text(concept: Any) -> str:
    if isinstance(concept, list):
        return "; ".join(filter(None, (_text(c) for c in concept)))
    if not isinstance(concept, dict):
        return ""
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    return str(concept.get("text") or next((c.get("display") or c.get("code") for c in codings), "") or "")


def _identified(reference: Any, system: str) -> str:
    identifier = (reference or {}).get("identifier") if isinstance(reference, dict) else None
    if isinstance(identifier, dict) and identifier.get("system") == system:
        return str(identifier.get("value") or "")
    return ""


def _due(task: dict[str, Any]) -> str:
    """When the receiving unit should have answered: the Task's restriction period, else its priority's
    :data:`DUE_DAYS` from when it was authored."""
    end = (((task.get("restriction") or {}).get("period")) or {}).get("end")
    if end:
        return str(end)
    authored = str(task.get("authoredOn") or "")
    try:
        start = datetime.fromisoformat(authored)
    except ValueError:
        return ""
    return (start + timedelta(days=DUE_DAYS.get(str(task.get("priority")), DUE_DAYS["routine"]))).isoformat()


def _before(moment: str, now: datetime) -> bool:
    try:
        when = datetime.fromisoformat(moment)
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=now.tzinfo)
    return when < now


def referral_of(
    task: dict[str, Any], requests: dict[str, dict[str, Any]], units: dict[str, Unit], now: datetime
) -> Referral:
    """A referral Task (with its ServiceRequest when the caller may read it) arranged for the inbox."""
    request = requests.get(str((task.get("focus") or {}).get("reference") or "").removeprefix("ServiceRequest/"), {})
    location = str((task.get("location") or {}).get("reference") or "")
    if not location:
        location = str(((request.get("locationReference") or [{}])[0]).get("reference") or "")
    receiving = next((u for u in units.values() if f"Location/{u.location_id}" == location), None)
    referring = _identified(task.get("requester") or request.get("requester"), CLUES_SYSTEM)
    status = str(task.get("status") or "")
    due = _due(task)
    outputs = task.get("output") or []
    return Referral(
        task_id=str(task.get("id")),
        status=status,
        priority=str(task.get("priority") or request.get("priority") or "routine"),
        patient=str((task.get("for") or {}).get("reference") or "").removeprefix("Patient/"),
        authored=str(task.get("authoredOn") or request.get("authoredOn") or "")[:16].replace("T", " "),
        due=due[:10],
        overdue=status in OPEN and bool(due) and _before(due, now),
        receiver=_identified(task.get("owner"), INSTITUTION_SYSTEM) or str((task.get("owner") or {}).get("display")),
        receiving_unit=receiving.clues if receiving else "",
        receiving_unit_name=receiving.name if receiving else str((task.get("location") or {}).get("display") or ""),
        referring_unit=referring,
        referring_unit_name=units[referring].name if referring in units else "",
        service=_text(request.get("code")),
        reason=_text(task.get("reasonCode")) or _text(request.get("reasonCode")),
        answer=_text(task.get("statusReason")),
        note=next((str(o["valueString"]) for o in outputs if isinstance(o, dict) and "valueString" in o), ""),
        outputs=[
            str(o["valueReference"].get("reference"))
            for o in outputs
            if isinstance(o, dict) and isinstance(o.get("valueReference"), dict)
        ],
    )
