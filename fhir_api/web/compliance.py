"""What the compliance page shows beside the AuditEvents: break-the-glass accesses and the ledger's state.

- Break-the-glass decisions are recorded by the API's policy (fhir_api/access.py ``record_break_glass``) as
  events of the audit log, listed by the ``break_glass_log`` projection; the AuditEvent of the same request
  does not say which decision it was, so the page marks an access as break-the-glass when a listed decision
  names the same user, institution and resource within a few seconds before it.
- The ledger's verification is :func:`projections.ledger.verify` (what ``ehr verify`` runs), done in process
  and kept for a while: the page shows when it was done and can ask for a fresh one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_api.services import Services
from projections.access import break_glass_entries
from projections.ledger import VerifyReport, verify

__all__ = ["BreakGlass", "LedgerStatus", "break_glass_for", "is_break_glass", "ledger_status"]

_WINDOW_SECONDS = 10.0
_FRESH_SECONDS = 300.0


@dataclass(frozen=True)
class BreakGlass:
    recorded: str
    institution: str
    unit: str | None
    user: str
    role: str | None
    reason: str
    target: str


def break_glass_for(services: Services, patient_ids: list[str], limit: int = 200) -> list[BreakGlass]:
    """Break-the-glass decisions on these Patient records or on resources in their compartments, newest first."""
    if not patient_ids:
        return []
    with services.views.read() as tx:
        rows = break_glass_entries(tx, patient_ids, limit)
    return [BreakGlass(str(r[0]), str(r[1]), r[2], str(r[3]), r[4], str(r[5]), str(r[6])) for r in rows]


def _instant(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def is_break_glass(access: dict[str, Any], decisions: list[BreakGlass]) -> BreakGlass | None:
    """The listed break-the-glass decision behind this access (same who, same target, just before)."""
    when = _instant(str(access.get("recorded", "")))
    btg = "BTG" in str(access.get("purpose", "")).split(",")
    if when is None:
        return None
    for decision in decisions:
        if decision.user != access.get("user") or decision.institution != access.get("institution"):
            continue
        target = decision.target.removesuffix("/$everything")
        if not any(target == ref or ref.startswith(target + "/") for ref in access.get("references", [])):
            continue
        decided = _instant(decision.recorded)
        if decided is not None and 0 <= when - decided <= _WINDOW_SECONDS:
            return decision
    if btg:  # the audit entry itself says so (purpose of use BTG): the reason is in the log above
        return BreakGlass(
            str(access.get("recorded", "")),
            str(access.get("institution", "")),
            None,
            str(access.get("user", "")),
            None,
            "",
            "",
        )
    return None


@dataclass
class LedgerStatus:
    name: str
    report: VerifyReport | None
    checked_at: float
    error: str | None = None


_lock = threading.Lock()
_cache: dict[tuple[int, str], LedgerStatus] = {}


def ledger_status(services: Services, name: str, fresh: bool = False) -> LedgerStatus:
    """Verify the ``ledger`` (clinical log) or ``audit_ledger``, unless a recent result exists."""
    key = (id(services), name)
    with _lock:
        cached = _cache.get(key)
        if cached is not None and not fresh and time.time() - cached.checked_at < _FRESH_SECONDS:
            return cached
        compliance = services.compliance
        application: Any = compliance.audit_log if name == "audit_ledger" else services.application
        try:
            report = verify(application, services.views, compliance.key.public_key, name)
            status = LedgerStatus(name, report, time.time())
        except Exception as error:  # an unreadable store is not an intact one: show why, never a traceback
            status = LedgerStatus(name, None, time.time(), f"the store could not be read: {error}")
        _cache[key] = status
        return status
