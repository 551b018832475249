"""The request decision: who calls (the token's claims and scopes), and whether their scopes and the
access policy let them do what the request needs.

``user``/``system`` scopes reach every patient; ``patient`` scopes (SMART App Launch 2.0 §Scopes and
Launch Context: the ``patient`` launch context, here the token's ``patient`` claim) reach only that
patient's compartment: read/vread/history of a resource in it, searches naming it
(``patient=``/``subject=``/``_id``), its ``$everything``/``$summary``; of writes only the patient's own
Consent. Past the scopes, a single-resource read or a patient operation is held to the access policy
(``fhir_api/access.py``: own records, consent, or break-the-glass, logged).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from ehr_core.application import PATIENT_WRITABLE
from ehr_core.context import WriteContext
from fhir_api.access import Decision, decide, record_break_glass
from fhir_api.auth.needs import Need
from fhir_api.auth.scopes import Grant, covered
from projections.access import Viewer
from projections.resources import ResourceViews

__all__ = ["Caller", "caller_of", "policy", "scope_refusal", "viewer_of"]


@dataclass(frozen=True)
class Caller:
    claims: dict[str, Any]
    grants: list[Grant]
    #: Types of granular v2 scopes whose constraints this request's search holds to (the access policy may
    #: show those types for this request only; anything else, e.g. another type's _revinclude, never).
    constrained: frozenset[str] = frozenset()

    def context(self, request: Request, interaction: str) -> WriteContext:
        c = self.claims
        request_id = request.headers.get("x-request-id")
        values: dict[str, Any] = {
            "institution": str(c["institution"]),
            "unit": c.get("unit"),
            "user": str(c.get("user") or c.get("sub") or "anonymous"),
            "role": c.get("role"),
            "purpose": str(c.get("purpose") or "TREAT"),
            "address": request.client.host if request.client else None,
            "interaction": interaction,
        }
        patient = c.get("patient")
        if isinstance(patient, str) and patient and not any(g.context in ("user", "system") for g in self.grants):
            values["patient"] = patient  # a patient-facing app: it writes as the patient, not as staff
        if request_id:
            values["request_id"] = request_id[:128]
        if getattr(request.state, "ehr_break_glass", False):
            # The access was granted by breaking the glass; the audit entry says so (HL7 v3 BTG).
            values["purpose"] = "BTG"
        return WriteContext(**values)

    def viewer(self, break_glass: bool = False, now: datetime | None = None) -> Viewer:
        """What the access policy needs to filter searches, history and exports for this caller."""

        def reach(contexts: tuple[str, ...]) -> frozenset[str] | None:
            types = {
                g.resource_type
                for g in self.grants
                if g.context in contexts
                and g.permissions & {"r", "s"}
                and (not g.constraints or g.resource_type in self.constrained)
            }
            return None if "*" in types else frozenset(types)

        patient = self.claims.get("patient")
        return Viewer(
            institution=str(self.claims["institution"]),
            now=(now or datetime.now(UTC)).isoformat(),
            types=reach(("user", "system")),
            patient=patient if isinstance(patient, str) and patient else None,
            patient_types=reach(("patient",)),
            break_glass=break_glass,
        )


def scope_refusal(
    services: Any, caller: Caller, need: Need, query: dict[str, list[str]], method: str = "GET"
) -> str | None:
    """Why the caller's scopes do not allow ``need`` (None: they do). ``user``/``system`` scopes reach every
    patient; ``patient`` scopes only reads inside the token patient's compartment (SMART App Launch:
    the patient context), and of writes only the patient's own Consent."""
    searched = query if method == "GET" else None  # granular scopes: GET searches only (the URL is the search)
    wide = [g for g in caller.grants if g.context in ("user", "system")]
    if covered(wide, need, searched):
        return None
    narrow = [g for g in caller.grants if g.context == "patient"]
    patient = caller.claims.get("patient")
    if not (covered(narrow, need, searched) and isinstance(patient, str) and patient):
        return f"no scope grants this interaction ({need.resource_type} needs '{need.permissions}')"
    if not _in_compartment(services, patient, need, query):
        return f"patient-level scopes reach only Patient/{patient}'s compartment (reads and searches naming it)"
    return None


def _in_compartment(services: Any, patient: str, need: Need, query: dict[str, list[str]]) -> bool:
    """Whether a patient-context request stays inside the token's patient compartment. Of writes, only a
    plain create or update of a type the patient decides (their Consent) passes here; the domain then
    checks that it is the token patient's own (``RecordApplication.authorize_patient``)."""
    if need.write:
        return need.resource_type in PATIENT_WRITABLE and "s" not in need.permissions and "d" not in need.permissions
    if need.patient_operation is not None:
        return need.patient_operation == patient
    if need.compartment is not None:
        return need.compartment == patient
    refs = {patient, f"Patient/{patient}"}
    if need.target is not None:
        resource_type, resource_id = need.target
        if resource_type == "Patient":
            return resource_id == patient
        with services.views.read() as tx:
            return ResourceViews.in_compartment(tx, patient, resource_type, resource_id)
    if need.resource_type == "Patient":
        return query.get("_id", [""]) == [patient]
    values = query.get("patient", []) + query.get("subject", [])
    return bool(values) and all(v in refs for v in values)


def policy(request: Request, caller: Caller, need: Need, reason: str | None) -> Decision:
    """The access policy (fhir_api/access.py): own records, consent, or break-the-glass (logged)."""
    services = request.app.state.services
    institution = str(caller.claims["institution"])
    patient = need.patient_operation if need.target is None else None
    if patient is not None:
        services.identity_current()  # the unified record's links, as $everything will read them
    with services.views.read() as tx:
        decision = decide(tx, institution, target=need.target, patient=patient, break_glass=reason)
    if decision.basis == "break-the-glass" and reason is not None:
        what = f"{need.target[0]}/{need.target[1]}" if need.target else f"Patient/{patient}/$everything"
        record_break_glass(services, caller.claims, reason, what)
    return decision


def caller_of(request: Request) -> Caller | None:
    caller: Caller | None = getattr(request.state, "ehr_caller", None)
    return caller


def viewer_of(request: Request) -> Viewer | None:
    """The caller as the access policy filters reads (None with authentication disabled: no filter)."""
    caller = caller_of(request)
    if caller is None:
        return None
    return caller.viewer(break_glass=bool(getattr(request.state, "ehr_break_glass", False)))
