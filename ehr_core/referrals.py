"""Referral and counter-referral (referencia y contrarreferencia) as FHIR workflow: a ``ServiceRequest``
(intent ``order``, category SNOMED CT 3457005 "Patient referral") and the ``Task`` that tracks it
(R4 task.html "Task state machine", workflow-management.html option H: a Task whose ``focus`` is the request
and whose ``owner`` is the performer asked to act on it).

Who may move a referral Task (the write policy, :func:`check_transition`):

- the *referring* institution (the one that recorded the Task) creates it as ``draft`` or ``requested``,
  may edit it while it is still requested, and may only ``cancel`` it afterwards;
- the *receiving* institution (``Task.owner``) is the only one that may ``accept`` or ``reject`` it, then
  move it ``in-progress`` and ``completed`` (or ``failed``/``on-hold``) and fill ``Task.output`` (the
  receiving Encounter, the counter-referral note) — without changing whom it is for, what it is about or whom
  it is owned by.

An accepted (in-progress, on-hold, completed) referral grants the receiving institution read access to the
referred patient's record (``projections.access``); cancelled, rejected, failed and draft/requested ones
grant nothing.

The receiving institution is named in ``Task.owner`` by ``identifier`` (system ``urn:ehr-core:institution``)
or by a reference to an ``Organization`` that carries such an identifier. A Task owned by no named
institution is no referral between institutions: it grants nothing, and its workflow is its recorder's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ehr_core.errors import Forbidden, Unprocessable

__all__ = [
    "GRANTING",
    "INSTITUTION_SYSTEM",
    "REFERRAL_CATEGORY",
    "check_transition",
    "institution_named",
    "is_referral_task",
    "receiving_institution",
]

INSTITUTION_SYSTEM = "urn:ehr-core:institution"
#: SNOMED CT 3457005 "Patient referral", the ServiceRequest.category of a referral.
REFERRAL_CATEGORY = ("http://snomed.info/sct", "3457005")
#: Task.status values (R4 ValueSet task-status) under which a referral grants the receiver read access.
GRANTING = frozenset({"accepted", "in-progress", "on-hold", "completed"})
#: What the referring institution may set, and what only the receiving one may.
_REFERRER = frozenset({"draft", "requested", "cancelled"})
_RECEIVER = frozenset({"accepted", "rejected", "in-progress", "on-hold", "completed", "failed"})
#: Where a Task ends (R4 task.html: terminal states); nothing moves it again.
_TERMINAL = frozenset({"cancelled", "rejected", "completed", "failed", "entered-in-error"})
#: What the receiver may not change: whom the referral is for, what it is about, who asked and who owns it.
_FIXED = ("for", "focus", "owner", "requester", "intent")


def institution_named(reference: Any, organization: Callable[[str], dict[str, Any] | None]) -> str | None:
    """The institution a Reference names: its ``identifier`` (``urn:ehr-core:institution``) or the identifier
    of the ``Organization`` it refers to (``organization(id)`` gives its stored JSON). A ``display`` alone names
    none: free text ("Clinical Laboratory @ Acme Hospital") must not open a record to whoever it resembles."""
    if not isinstance(reference, dict):
        return None
    identifier = reference.get("identifier") or {}
    if isinstance(identifier, dict) and identifier.get("system") == INSTITUTION_SYSTEM and identifier.get("value"):
        return str(identifier["value"])
    target = str(reference.get("reference") or "")
    if target.startswith("Organization/"):
        found = organization(target.split("/", 1)[1])
        for ident in (found or {}).get("identifier") or []:
            if isinstance(ident, dict) and ident.get("system") == INSTITUTION_SYSTEM and ident.get("value"):
                return str(ident["value"])
    return None


def is_referral_task(task: dict[str, Any]) -> bool:
    """A Task that tracks a request (``focus`` a ServiceRequest) for a patient, owned by someone."""
    focus = str((task.get("focus") or {}).get("reference") or "")
    patient = str((task.get("for") or {}).get("reference") or "")
    return (
        task.get("resourceType") == "Task"
        and focus.startswith("ServiceRequest/")
        and patient.startswith("Patient/")
        and "owner" in task
    )


def receiving_institution(task: dict[str, Any], organization: Callable[[str], dict[str, Any] | None]) -> str | None:
    """The institution a referral Task is owned by (None: not a referral Task, or no institution named)."""
    if not is_referral_task(task):
        return None
    return institution_named(task.get("owner"), organization)


def check_transition(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    writer: str,
    recorder: str | None,
    organization: Callable[[str], dict[str, Any] | None],
) -> None:
    """Refuse a referral Task change the writer's side may not make (see the module's rules).

    ``recorder`` is the institution that recorded the Task (None for a new one: the writer)."""
    if not is_referral_task(new) and (old is None or not is_referral_task(old)):
        return
    referrer = recorder or writer
    receiver = receiving_institution(old if old is not None else new, organization)
    status = str(new.get("status"))
    if receiver is None or receiver == referrer:
        # Owned by no named institution (a lab, a practitioner: the HL7 Task examples) or inside one
        # institution: it grants nothing across institutions, so its workflow is the recorder's own.
        return
    if old is None:
        if status not in _REFERRER - {"cancelled"}:
            raise Forbidden(
                f"a referral Task is created as 'requested' (or 'draft'); only the receiving institution "
                f"({receiver}) may set it '{status}'"
            )
        return
    before = str(old.get("status"))
    if before in _TERMINAL and status != before:
        raise Unprocessable(f"the referral Task is '{before}', a final state: it cannot become '{status}'")
    if writer == referrer:
        allowed = _REFERRER if before in ("draft", "requested") else {before, "cancelled"}
        if status not in allowed:
            raise Forbidden(
                f"the referring institution may only cancel this referral; '{status}' is the receiving "
                f"institution's ({receiver}) to set"
            )
        if before not in ("draft", "requested") and status == before and _fixed(old) != _fixed(new):
            raise Forbidden("an accepted referral's patient, request and owner are fixed: cancel it and refer anew")
        return
    # The writer is the receiver (anyone else was refused by the write policy before this point).
    if status not in _RECEIVER | {before}:
        raise Forbidden(f"only the referring institution ({referrer}) may set this referral '{status}'")
    if _fixed(old) != _fixed(new):
        raise Forbidden("the receiving institution may not change whom a referral is for, its request or its owner")


def _fixed(task: dict[str, Any]) -> list[Any]:
    return [task.get(name) for name in _FIXED]
