"""The access policy across institutions (DESIGN.md "Access"): decisions for one resource or one
patient's unified record, and the :class:`~projections.access.Viewer` that filters every other read path.

An institution reads what it recorded. A resource recorded by another institution needs a grant valid now of
every patient whose compartment holds it — an active Consent naming the caller's institution (or naming no
institution: every one), or an accepted referral Task owned by it (:mod:`ehr_core.referrals`) — and no deny
provision of the patient's active Consents covering it (class, code or security label); resources of
:data:`~projections.access.SHARED_TYPES` (directories, terminology) are everyone's. Otherwise only
break-the-glass: the header ``X-EHR-Break-Glass: <reason>`` — granted, flagged in the response
(``X-EHR-Break-Glass: granted``), recorded as an event of the audit log (:func:`record_break_glass`) that the
review list (``break_glass_log``) projects and the audit ledger signs, and audited with purpose of use
``BTG`` (HL7 v3 ActReason "break the glass").

Where it applies (auth on):

- read, vread, instance history: :func:`decide` for the one resource (403 when denied); the golden
  ``Person/{id}`` of the master patient index is decided over every Patient record linked to it.
- ``Patient/{id}/$everything``, ``$summary``, ``$person``: :func:`decide` for the *unified* record — every
  resource in the compartments of every Patient record the master patient index links to it (all or
  nothing: 403 unless each one is visible), since those operations return the linked records too.
- search (matches, ``total``, paging cursors), ``_include``/``_revinclude``, type and system history, bulk
  ``$export``: filtered in SQL by :func:`projections.access.visible_clause` (the same rule; see there),
  also on every resource a chained parameter or ``_has`` passes through.
- ``$match``, ``$ihe-pix``, ``Person/$review``: only Patient records the caller may read, with their
  identifiers (:mod:`fhir_api.operations.match`).
- the server's AuditEvent and Provenance: :func:`projections.access.audit_clause` and
  :func:`projections.access.provenance_clause` (:mod:`fhir_api.interactions.audit_resources`).

Every decision reaches the audit log through the audit middleware (the status, and the resources disclosed).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from eventsourcing.persistence import PersistenceError

from ehr_core.audit import BreakGlassAccess
from ehr_core.errors import StoreUnavailable
from projections.access import SHARED_TYPES, grant_basis, owner_of, owners_and_consent
from projections.db import Tx
from projections.identity import IdentityIndex

if TYPE_CHECKING:
    from fhir_api.services import Services

__all__ = ["Decision", "decide", "record_break_glass"]


@dataclass(frozen=True)
class Decision:
    permitted: bool
    #: own, shared, consent, referral, break-the-glass, unknown (nothing recorded: the read answers 404), denied
    basis: str
    owners: tuple[str, ...] = ()
    #: The grants that allow a consent or referral read (``Consent/id``, ``Task/id``): the audit entry's reason.
    grants: tuple[str, ...] = ()


def _granted(tx: Tx, institution: str, instant: str, owners: tuple[str, ...], **where: Any) -> Decision:
    """A read allowed by grants: ``referral`` when only referral Tasks allow it, else ``consent``."""
    grants = tuple(grant_basis(tx, where.get("patients", []), institution, instant, where.get("target")))
    basis = "referral" if grants and all(g.startswith("Task/") for g in grants) else "consent"
    return Decision(True, basis, owners, grants)


def decide(
    tx: Tx,
    institution: str,
    *,
    target: tuple[str, str] | None = None,
    patient: str | None = None,
    break_glass: str | None = None,
    now: datetime | None = None,
) -> Decision:
    """The decision for reading ``target`` (one resource) or ``patient``'s unified record."""
    instant = (now or datetime.now(UTC)).isoformat()
    if target is not None:
        owner = owner_of(tx, *target)
        if owner is None and target[0] == "Person":
            return _golden_record(tx, institution, target[1], break_glass, instant)
        if owner is None:
            return Decision(True, "unknown")
        owners: tuple[str, ...] = (owner,)
        if owners == (institution,):
            return Decision(True, "own", owners)
        if target[0] in SHARED_TYPES:
            return Decision(True, "shared", owners)
        visible = any(readable for _, readable in owners_and_consent(tx, target[0], [target[1]], institution, instant))
    else:
        assert patient is not None
        # The unified record: $everything and $summary return every linked record of the same person, so
        # each linked Patient record must be readable. What other institutions wrote into those compartments
        # is then filtered entry by entry (projections.identity.everything_page): a foreign write into a
        # patient's compartment must not lock the record holder out of its own patient's record.
        patients = IdentityIndex.linked_records(tx, patient)
        return _records_decision(tx, institution, patients, break_glass, instant)
    if visible:
        return _granted(tx, institution, instant, owners, target=target)
    if break_glass:
        return Decision(True, "break-the-glass", owners)
    return Decision(False, "denied", owners)


def _golden_record(tx: Tx, institution: str, person: str, break_glass: str | None, instant: str) -> Decision:
    """``Person/{id}`` of the master patient index merges the demographics of every Patient record linked to
    the person: readable when each of those records is."""
    records = [link.record for link in IdentityIndex.links(tx, person)]
    return _records_decision(tx, institution, records, break_glass, instant)


def _records_decision(tx: Tx, institution: str, records: list[str], break_glass: str | None, instant: str) -> Decision:
    """Readable when every one of the Patient ``records`` is (own or consent)."""
    if not records:
        return Decision(True, "unknown")
    rows = owners_and_consent(tx, "Patient", records, institution, instant)
    owners = tuple(sorted({owner for owner, _ in rows}))
    if not rows:
        return Decision(True, "unknown")
    if owners == (institution,):
        return Decision(True, "own", owners)
    if len(rows) == len(records) and all(readable for _, readable in rows):
        return _granted(tx, institution, instant, owners, patients=records)
    if break_glass:
        return Decision(True, "break-the-glass", owners)
    return Decision(False, "denied", owners)


def record_break_glass(services: Services, claims: dict[str, Any], reason: str, what: str) -> None:
    """Record a break-the-glass access (who, institution, unit, role, why, what; when is the event's time) in
    the audit log, and return once the review list shows it (read-your-writes). Called before anything is
    disclosed: an access that cannot be recorded is refused (503), never granted unrecorded."""
    access = BreakGlassAccess.grant(
        institution=str(claims.get("institution")),
        unit=claims.get("unit"),
        user=str(claims.get("user") or claims.get("sub") or "anonymous"),
        role=claims.get("role"),
        reason=reason[:500],
        target=what,
    )
    try:
        notification_id = services.compliance.audit_log.record_break_glass(access)
    except (PersistenceError, psycopg.Error, sqlite3.Error, OSError) as error:
        raise StoreUnavailable(
            f"break-the-glass could not be recorded in the audit log ({type(error).__name__}), so nothing is "
            "disclosed; try again shortly"
        ) from error
    services.wait_until_projected("break_glass", notification_id)
