"""issue 7: what the access policy needs from the log: who recorded each resource, and active Consents.

- ``resource_owners``: the institution that recorded a resource's first version ("an institution reads
  what it recorded").
- ``consent_grants``: one row per (Consent, institution) that an active, permitting Consent lets read the
  patient's record, with its period. The institution is named in ``Consent.provision.actor.reference``
  by ``identifier`` (system ``urn:ehr-core:institution``) or ``display``. A Consent updated to another
  status, or deleted, stops granting (its rows are replaced or removed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from projections.changes import Change
from projections.db import Dialect, Tx
from projections.view import View

__all__ = ["INSTITUTION_SYSTEM", "AccessView", "consent_grants"]

INSTITUTION_SYSTEM = "urn:ehr-core:institution"


def consent_grants(consent: dict[str, Any]) -> list[tuple[str, str, str | None, str | None]]:
    """(patient id, institution, start, end) that a Consent grants; none unless active and permitting."""
    if consent.get("status") != "active":
        return []
    provision = consent.get("provision") or {}
    if provision.get("type", "permit") != "permit":
        return []
    reference = str((consent.get("patient") or {}).get("reference", ""))
    if not reference.startswith("Patient/"):
        return []
    patient = reference.split("/", 1)[1]
    period = provision.get("period") or {}
    grants = []
    for actor in provision.get("actor") or []:
        ref = actor.get("reference") or {}
        identifier = ref.get("identifier") or {}
        institution = identifier.get("value") if identifier.get("system") == INSTITUTION_SYSTEM else ref.get("display")
        if isinstance(institution, str) and institution:
            grants.append((patient, institution, period.get("start"), period.get("end")))
    return grants


class AccessView(View):
    tables = ("resource_owners", "consent_grants")

    def create(self, tx: Tx, dialect: Dialect) -> None:
        tx.execute(
            """CREATE TABLE IF NOT EXISTS resource_owners (
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                institution TEXT NOT NULL,
                PRIMARY KEY (resource_type, resource_id))"""
        )
        tx.execute(
            """CREATE TABLE IF NOT EXISTS consent_grants (
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                patient_id TEXT NOT NULL,
                institution TEXT NOT NULL,
                period_start TEXT,
                period_end TEXT)"""
        )
        tx.execute("CREATE INDEX IF NOT EXISTS consent_grants_patient ON consent_grants (patient_id, institution)")
        # Not a projection (it is written by the access policy at request time, and a rebuild must keep it),
        # so it is not in ``tables``: break-the-glass grants waiting for review.
        tx.execute(
            "CREATE TABLE IF NOT EXISTS break_glass_log (recorded TEXT NOT NULL, institution TEXT NOT NULL, "
            "unit TEXT, user_id TEXT NOT NULL, role TEXT, reason TEXT NOT NULL, target TEXT NOT NULL, "
            "reviewed INTEGER NOT NULL DEFAULT 0)"
        )

    def apply(self, tx: Tx, changes: Sequence[Change]) -> None:
        tx.executemany(
            "INSERT INTO resource_owners (resource_type, resource_id, institution) VALUES (?, ?, ?) "
            "ON CONFLICT (resource_type, resource_id) DO NOTHING",
            [
                (c.resource_type, c.resource_id, str(c.context.get("institution", "unknown")))
                for c in changes
                if not c.deleted
            ],
        )
        for change in changes:
            if change.resource_type != "Consent":
                continue
            tx.execute("DELETE FROM consent_grants WHERE resource_id = ?", (change.resource_id,))
            if change.body is None:
                continue
            tx.executemany(
                "INSERT INTO consent_grants (resource_type, resource_id, patient_id, institution, period_start, "
                "period_end) VALUES ('Consent', ?, ?, ?, ?, ?)",
                [(change.resource_id, *grant) for grant in consent_grants(orjson.loads(change.body))],
            )
