"""The audit views: the audit log projected as FHIR AuditEvent resources, searchable, and per patient.

Kept by :class:`AuditProjector`, which follows the audit log (not the clinical log) with the same
exactly-once tracking as every projector. Tables (own, never shared with the resource views, so a
rebuild of either side leaves the other alone):

- ``audit_entries``: one row per entry, the AuditEvent JSON to serve and the columns searched on;
- ``audit_entry_refs``: (entry, parameter, value) for ``patient`` and ``entity``.

The AuditEvent JSON is rendered when read (:func:`ehr_core.audit.audit_event` of the stored entry), which
keeps the projection cheap: it runs for every API interaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from eventsourcing.persistence import Notification

from ehr_core.audit import AuditEntry, AuditRecord, audit_event, audit_event_id
from projections.db import Tx, ViewDatabase
from projections.projector import Projector

__all__ = ["AuditProjector", "AuditQuery", "StoredAudit", "audit_entries_for_patient", "read_audit", "search_audit"]

_ENTRY_COLUMNS = (
    "audit_nid",
    "id",
    "recorded",
    "action",
    "outcome",
    "interaction",
    "address",
    "entry",
    "user_id",
    "user_key",
    "institution",
)
_DATE_PREFIXES = {"eq": "=", "ge": ">=", "le": "<=", "gt": ">", "lt": "<", "sa": ">", "eb": "<"}


class AuditProjector(Projector):
    """Follows the audit log; overrides how a batch is applied (raw audit records, not resource changes)."""

    @property
    def tables(self) -> tuple[str, ...]:
        return ("audit_entry_refs", "audit_entries")

    def beside(self, database: ViewDatabase) -> AuditProjector:
        return AuditProjector(self.application, database, [], self.name, self.batch_size)

    def create_tables(self) -> None:
        with self.database.write() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS projection_tracking (name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )
            tx.execute(
                """CREATE TABLE IF NOT EXISTS audit_entries (
                    audit_nid BIGINT PRIMARY KEY,
                    id TEXT NOT NULL,
                    recorded TEXT NOT NULL,
                    action TEXT NOT NULL,
                    outcome TEXT NOT NULL,
                    interaction TEXT NOT NULL,
                    address TEXT,
                    entry TEXT NOT NULL,
                    user_id TEXT NOT NULL,
                    user_key TEXT NOT NULL,
                    institution TEXT NOT NULL)"""
            )
            tx.execute("CREATE UNIQUE INDEX IF NOT EXISTS audit_entries_id ON audit_entries (id)")
            tx.execute("CREATE INDEX IF NOT EXISTS audit_entries_recorded ON audit_entries (recorded)")
            tx.execute(
                "CREATE TABLE IF NOT EXISTS audit_entry_refs "
                "(audit_nid BIGINT NOT NULL, param TEXT NOT NULL, value TEXT NOT NULL)"
            )
            tx.execute(
                "CREATE INDEX IF NOT EXISTS audit_entry_refs_lookup ON audit_entry_refs (param, value, audit_nid)"
            )
            tx.execute(
                "INSERT INTO projection_tracking (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                (self.name,),
            )

    def apply_notifications(self, tx: Tx, notifications: Sequence[Notification]) -> int | None:
        rows, refs = [], []
        for notification in notifications:
            event = self.application.mapper.to_domain_event(notification)
            if not isinstance(event, AuditRecord.Recorded):
                continue
            entry = AuditEntry.from_dict(event.entry)
            resource_id = audit_event_id(notification.id)
            rows.append(
                (
                    notification.id,
                    resource_id,
                    entry.recorded,
                    entry.action,
                    entry.outcome,
                    entry.interaction,
                    entry.address,
                    orjson.dumps(event.entry).decode(),
                    entry.user,
                    f"urn:ehr-core:user:{entry.institution}|{entry.user}",
                    f"urn:ehr-core:institution|{entry.institution}",
                )
            )
            # Each (parameter, value) once: a Patient read or searched is both an entity (as the answer named
            # it) and a patient of the entry, and a page of twenty Patients was forty rows too many, each
            # an entry in the look-up index that every audited interaction pays for.
            found: dict[tuple[str, str], None] = {("patient", f"Patient/{p}"): None for p in entry.patients}
            for reference in entry.entities:
                found[("entity", reference)] = None
                found[("entity", reference.split("/_history/")[0])] = None
            found.update({("entity", f"Patient/{p}"): None for p in entry.patients})
            refs += [(notification.id, param, value) for param, value in found]
        tx.insert("audit_entries", _ENTRY_COLUMNS, rows)
        tx.insert("audit_entry_refs", ("audit_nid", "param", "value"), refs)
        return None

    def reset(self) -> None:
        with self._lock, self.database.write() as tx:
            for table in self.tables:
                tx.execute(f"DELETE FROM {table}")
            tx.execute("UPDATE projection_tracking SET position = 0 WHERE name = ?", (self.name,))
            self._position = 0

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        with self.database.read() as tx:
            return {t: sorted(tx.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in self.tables}


# -- queries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAudit:
    notification_id: int
    resource_id: str
    recorded: str
    body: bytes
    entry: AuditEntry


def _stored(row: tuple[Any, ...]) -> StoredAudit:
    entry = AuditEntry.from_dict(orjson.loads(row[3]))
    resource_id = str(row[1])
    return StoredAudit(int(row[0]), resource_id, str(row[2]), orjson.dumps(audit_event(entry, resource_id)), entry)


_COLUMNS = "e.audit_nid, e.id, e.recorded, e.entry"


def read_audit(tx: Tx, resource_id: str) -> StoredAudit | None:
    row = tx.execute(f"SELECT {_COLUMNS} FROM audit_entries e WHERE e.id = ?", (resource_id,)).fetchone()
    return _stored(row) if row else None


@dataclass
class AuditQuery:
    """Parsed AuditEvent search: each list is OR within a parameter; parameters are ANDed."""

    refs: dict[str, list[str]]
    columns: dict[str, list[str]]
    dates: list[tuple[str, str]]
    before: int | None = None
    #: The access policy's SQL condition on the entry ``e`` (None: auth off, every entry).
    policy: tuple[str, list[Any]] | None = None


def search_audit(tx: Tx, query: AuditQuery, limit: int) -> list[StoredAudit]:
    """Newest first; ``before`` is the page cursor (entries with a lower notification id)."""
    where: list[str] = []
    params: list[Any] = []
    for param, values in query.refs.items():
        marks = ", ".join("?" * len(values))
        if param == "agent":
            where.append(f"(e.user_id IN ({marks}) OR e.user_key IN ({marks}) OR e.institution IN ({marks}))")
            params += [*values, *values, *values]
            continue
        where.append(
            f"e.audit_nid IN (SELECT r.audit_nid FROM audit_entry_refs r WHERE r.param = ? AND r.value IN ({marks}))"
        )
        params += [param, *values]
    for column, values in query.columns.items():
        where.append(f"e.{column} IN ({', '.join('?' * len(values))})")
        params += values
    for operator, value in query.dates:
        where.append(f"e.recorded {operator} ?")
        params.append(value)
    if query.before is not None:
        where.append("e.audit_nid < ?")
        params.append(query.before)
    if query.policy is not None:
        where.append(query.policy[0])
        params += query.policy[1]
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM audit_entries e {clause} ORDER BY e.audit_nid DESC LIMIT ?", (*params, limit)
    ).fetchall()
    return [_stored(r) for r in rows]


def date_condition(raw: str) -> tuple[str, str]:
    """``ge2026-01-01`` → (">=", "2026-01-01"): recorded instants compare as text (all UTC, same format)."""
    prefix = raw[:2]
    operator, value = (_DATE_PREFIXES[prefix], raw[2:]) if prefix in _DATE_PREFIXES else (">=", raw)
    if operator in ("<=", ">") and len(value) < 32:
        # A date or a shorter instant covers everything that starts with it ("~" sorts after digits).
        value += "~"
    return operator, value


def audit_entries_for_patient(
    tx: Tx, patient_id: str, since: str | None = None, until: str | None = None
) -> list[StoredAudit]:
    """Every entry concerning ``Patient/{patient_id}``, oldest first."""
    params: list[Any] = [f"Patient/{patient_id}"]
    extra = ""
    if since:
        extra += " AND e.recorded >= ?"
        params.append(since)
    if until:
        extra += " AND e.recorded <= ?"
        params.append(until)
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM audit_entries e WHERE e.audit_nid IN "
        f"(SELECT r.audit_nid FROM audit_entry_refs r WHERE r.param = 'patient' AND r.value = ?){extra} "
        "ORDER BY e.audit_nid",
        params,
    ).fetchall()
    return [_stored(r) for r in rows]


def audit_count(tx: Tx) -> int:
    row = tx.execute("SELECT COUNT(*) FROM audit_entries").fetchone()
    return int(row[0]) if row else 0


def patients_of(tx: Tx, resource_type: str, resource_id: str) -> list[str]:
    """The patient compartments the current version of a resource is in (for refused or failed requests)."""
    rows = tx.execute(
        "SELECT patient_id FROM resource_compartments WHERE resource_type = ? AND resource_id = ?",
        (resource_type, resource_id),
    ).fetchall()
    return [str(r[0]) for r in rows]
