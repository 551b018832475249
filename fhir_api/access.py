"""issue 7: the access policy across institutions (DESIGN.md "Access"), for single-resource reads.

An institution reads what it recorded. A resource recorded by another institution needs the patient's
active Consent naming the caller's institution (within its period), or break-the-glass: the header
``X-EHR-Break-Glass: <reason>`` — granted, flagged in the response (``X-EHR-Break-Glass: granted``) and
listed in ``break_glass_log`` for review.

Applied (by :class:`fhir_api.auth.AuthMiddleware`, with auth on) to read, vread and instance history of one
resource, and to ``Patient/{id}/$everything`` / ``$summary`` (all-or-nothing: permitted only if every
resource in the patient's compartment is the caller's own, or with consent or break-the-glass). Search,
``_include``, history by type/system and ``$export`` are NOT filtered by this policy yet (see the report).
Every decision reaches the audit log through the audit middleware (status 403 or the read's own status).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from projections.db import Tx

__all__ = ["Decision", "decide", "record_break_glass"]


@dataclass(frozen=True)
class Decision:
    permitted: bool
    #: own, consent, break-the-glass, unknown (nothing recorded: the read answers 404), denied
    basis: str
    owners: tuple[str, ...] = ()


def _consented(tx: Tx, patients: list[str], institution: str, now: str) -> bool:
    if not patients:
        return False
    marks = ", ".join("?" for _ in patients)
    row = tx.execute(
        f"SELECT 1 FROM consent_grants WHERE institution = ? AND patient_id IN ({marks}) "
        "AND (period_start IS NULL OR period_start <= ?) AND (period_end IS NULL OR period_end >= ?) LIMIT 1",
        (institution, *patients, now, now),
    ).fetchone()
    return row is not None


def decide(
    tx: Tx,
    institution: str,
    *,
    target: tuple[str, str] | None = None,
    patient: str | None = None,
    break_glass: str | None = None,
    now: datetime | None = None,
) -> Decision:
    """The decision for reading ``target`` (one resource) or all of ``patient``'s compartment."""
    instant = (now or datetime.now(UTC)).isoformat()
    if target is not None:
        rows = tx.execute(
            "SELECT institution FROM resource_owners WHERE resource_type = ? AND resource_id = ?", target
        ).fetchall()
        owners = tuple(sorted({str(r[0]) for r in rows}))
        if not owners:
            return Decision(True, "unknown")
        if target[0] == "Patient":
            patients = [target[1]]
        else:
            patients = [
                str(r[0])
                for r in tx.execute(
                    "SELECT patient_id FROM resource_compartments WHERE resource_type = ? AND resource_id = ?", target
                ).fetchall()
            ]
    else:
        assert patient is not None
        owners = tuple(
            sorted(
                {
                    str(r[0])
                    for r in tx.execute(
                        "SELECT o.institution FROM resource_compartments c JOIN resource_owners o "
                        "ON o.resource_type = c.resource_type AND o.resource_id = c.resource_id "
                        "WHERE c.patient_id = ? UNION SELECT institution FROM resource_owners "
                        "WHERE resource_type = 'Patient' AND resource_id = ?",
                        (patient, patient),
                    ).fetchall()
                }
            )
        )
        patients = [patient]
        if not owners:
            return Decision(True, "unknown")
    if set(owners) == {institution}:
        return Decision(True, "own", owners)
    if _consented(tx, patients, institution, instant):
        return Decision(True, "consent", owners)
    if break_glass:
        return Decision(True, "break-the-glass", owners)
    return Decision(False, "denied", owners)


def record_break_glass(tx: Tx, claims: dict[str, Any], reason: str, what: str) -> None:
    """List a break-the-glass access for review (who, institution, why, what, when)."""
    tx.execute(
        "INSERT INTO break_glass_log (recorded, institution, unit, user_id, role, reason, target) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            datetime.now(UTC).isoformat(),
            str(claims.get("institution")),
            claims.get("unit"),
            str(claims.get("user") or claims.get("sub") or "anonymous"),
            claims.get("role"),
            reason[:500],
            what,
        ),
    )
