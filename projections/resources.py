"""Current resources and version history: the views behind read, vread and history.

``resources`` holds each resource's latest version as the bytes to serve. ``resource_history`` holds
every version in notification order, which is what makes history paging stable while writes arrive:
a page is "entries with notification id below N", never an offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from projections.changes import Change
from projections.db import Dialect, Tx
from projections.privacy import check_erased
from projections.view import View

__all__ = ["HistoryEntry", "Period", "ResourceViews", "StoredResource", "current_during", "stored_bytes"]


@dataclass(frozen=True)
class StoredResource:
    resource_type: str
    resource_id: str
    version: int
    last_updated: str
    #: None when this version is a retraction.
    body: bytes | None

    @property
    def deleted(self) -> bool:
        return self.body is None


@dataclass(frozen=True)
class HistoryEntry(StoredResource):
    notification_id: int
    method: str


def _blob(dialect: Dialect) -> str:
    return "BYTEA" if dialect == "postgres" else "BLOB"


class ResourceViews(View):
    tables = ("resources", "resource_history", "resource_compartments")
    query_indexes = ("resource_history_instance", "resource_history_type")

    def create(self, tx: Tx, dialect: Dialect) -> None:
        blob = _blob(dialect)
        tx.execute(
            f"""CREATE TABLE IF NOT EXISTS resources (
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                last_updated TEXT NOT NULL,
                body {blob},
                notification_id BIGINT NOT NULL,
                PRIMARY KEY (resource_type, resource_id))"""
        )
        tx.execute(
            f"""CREATE TABLE IF NOT EXISTS resource_history (
                notification_id BIGINT PRIMARY KEY,
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                last_updated TEXT NOT NULL,
                method TEXT NOT NULL,
                body {blob})"""
        )
        tx.execute(
            "CREATE INDEX IF NOT EXISTS resource_history_instance "
            "ON resource_history (resource_type, resource_id, notification_id)"
        )
        tx.execute(
            "CREATE INDEX IF NOT EXISTS resource_history_type ON resource_history (resource_type, notification_id)"
        )
        # Which patient compartments hold each current resource (patient-level export, $everything).
        tx.execute(
            """CREATE TABLE IF NOT EXISTS resource_compartments (
                patient_id TEXT NOT NULL,
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                PRIMARY KEY (patient_id, resource_type, resource_id))"""
        )
        tx.execute(
            "CREATE INDEX IF NOT EXISTS resource_compartments_resource "
            "ON resource_compartments (resource_type, resource_id)"
        )

    def apply(self, tx: Tx, changes: Sequence[Change]) -> None:
        tx.insert(
            "resource_history",
            ("notification_id", "resource_type", "resource_id", "version", "last_updated", "method", "body"),
            [
                (
                    c.notification_id,
                    c.resource_type,
                    c.resource_id,
                    c.version,
                    c.last_updated,
                    c.method,
                    c.body,
                )
                for c in changes
            ],
        )
        # Only the last change of each resource in the batch decides its current row.
        latest: dict[tuple[str, str], Change] = {}
        for change in changes:
            latest[(change.resource_type, change.resource_id)] = change
        tx.upsert(
            "resources",
            ("resource_type", "resource_id", "version", "last_updated", "body", "notification_id"),
            ("resource_type", "resource_id"),
            [
                (c.resource_type, c.resource_id, c.version, c.last_updated, c.body, c.notification_id)
                for c in latest.values()
            ],
        )
        tx.delete_keys(
            "resource_compartments",
            ("resource_type", "resource_id"),
            [(c.resource_type, c.resource_id) for c in latest.values() if c.version > 1],
        )
        tx.insert(
            "resource_compartments",
            ("patient_id", "resource_type", "resource_id"),
            [
                (patient, c.resource_type, c.resource_id)
                for c in latest.values()
                if not c.deleted
                for patient in dict.fromkeys(c.compartment)
            ],
        )

    # -- queries ---------------------------------------------------------------------------------

    @staticmethod
    def in_compartment(tx: Tx, patient: str, resource_type: str, resource_id: str) -> bool:
        """Whether ``Type/id`` is in ``Patient/patient``'s compartment (what a patient-context scope reaches)."""
        row = tx.execute(
            "SELECT 1 FROM resource_compartments WHERE patient_id = ? AND resource_type = ? AND resource_id = ?",
            (patient, resource_type, resource_id),
        ).fetchone()
        return row is not None

    @staticmethod
    def notification_of(tx: Tx, resource_type: str, resource_id: str, version: int) -> int | None:
        """The log position of one version (what a ledger proof is about); None: no such version."""
        row = tx.execute(
            "SELECT notification_id FROM resource_history WHERE resource_type = ? AND resource_id = ? AND version = ?",
            (resource_type, resource_id, version),
        ).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def written_at(tx: Tx, notification_id: int) -> tuple[str, str] | None:
        """(type, id) of the resource whose version is the event ``notification_id``; None: not a resource's."""
        row = tx.execute(
            "SELECT resource_type, resource_id FROM resource_history WHERE notification_id = ?", (notification_id,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    @staticmethod
    def read(tx: Tx, resource_type: str, resource_id: str) -> StoredResource | None:
        row = tx.execute(
            "SELECT version, last_updated, body FROM resources WHERE resource_type = ? AND resource_id = ?",
            (resource_type, resource_id),
        ).fetchone()
        if row is None:
            check_erased(tx, resource_type, resource_id)  # 410 shredded, 403 blocked
            return None
        return StoredResource(resource_type, resource_id, int(row[0]), str(row[1]), stored_bytes(row[2]))

    @staticmethod
    def read_many(tx: Tx, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredResource]:
        """The current versions of ``keys`` (type, id) found, one statement per resource type instead of
        one per resource: a searchset page of 20 entries is read in one round trip, not 20. A key not
        found is checked as :meth:`read` checks it (410 shredded, 403 blocked), and else left out."""
        ids_by_type: dict[str, list[str]] = {}
        for resource_type, resource_id in keys:
            ids = ids_by_type.setdefault(resource_type, [])
            if resource_id not in ids:
                ids.append(resource_id)
        found: dict[tuple[str, str], StoredResource] = {}
        for resource_type, ids in ids_by_type.items():
            marks = ", ".join("?" for _ in ids)
            rows = tx.execute(
                "SELECT resource_id, version, last_updated, body FROM resources "
                f"WHERE resource_type = ? AND resource_id IN ({marks})",
                (resource_type, *ids),
            ).fetchall()
            for row in rows:
                key = (resource_type, str(row[0]))
                found[key] = StoredResource(resource_type, key[1], int(row[1]), str(row[2]), stored_bytes(row[3]))
            for resource_id in ids:
                if (resource_type, resource_id) not in found:
                    check_erased(tx, resource_type, resource_id)
        return found

    @staticmethod
    def vread(tx: Tx, resource_type: str, resource_id: str, version: int) -> StoredResource | None:
        row = tx.execute(
            "SELECT last_updated, body FROM resource_history "
            "WHERE resource_type = ? AND resource_id = ? AND version = ?",
            (resource_type, resource_id, version),
        ).fetchone()
        if row is None:
            check_erased(tx, resource_type, resource_id)
            return None
        return StoredResource(resource_type, resource_id, version, str(row[0]), stored_bytes(row[1]))

    @staticmethod
    def history(
        tx: Tx,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        before: int | None = None,
        since: str | None = None,
        limit: int = 50,
        at: Period | None = None,
    ) -> list[HistoryEntry]:
        """Versions newest first, with notification id < ``before`` (the page cursor); with ``at``, only
        those current at some point during it (:func:`current_during`)."""
        clause, params = _where(resource_type, resource_id, before, since, at)
        rows = tx.execute(
            "SELECT notification_id, resource_type, resource_id, version, last_updated, method, body "
            f"FROM resource_history h {clause} ORDER BY notification_id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [
            HistoryEntry(str(r[1]), str(r[2]), int(r[3]), str(r[4]), stored_bytes(r[6]), int(r[0]), str(r[5]))
            for r in rows
        ]

    @staticmethod
    def count_history(
        tx: Tx,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        before: int | None = None,
        since: str | None = None,
        at: Period | None = None,
    ) -> int:
        clause, params = _where(resource_type, resource_id, before, since, at)
        row = tx.execute(f"SELECT COUNT(*) FROM resource_history h {clause}", params).fetchone()
        total = int(row[0]) if row else 0
        if total == 0 and resource_type is not None and resource_id is not None:
            check_erased(tx, resource_type, resource_id)  # Instance history of the erased
        return total


#: A period of recorded time, ``[start, end)``, as stored instants (``meta.lastUpdated``'s form).
Period = tuple[str, str]


def current_during(alias: str, period: Period) -> tuple[str, list[object]]:
    """R4 http.html#history ``_at``: "only include resource versions that were current at some point during
    the time period" — the ``resource_history`` rows (``alias``) recorded before the period ends and not
    replaced, by a later version or a delete, at or before it starts."""
    return (
        f"{alias}.last_updated < ? AND NOT EXISTS (SELECT 1 FROM resource_history n "
        f"WHERE n.resource_type = {alias}.resource_type AND n.resource_id = {alias}.resource_id "
        f"AND n.version = {alias}.version + 1 AND n.last_updated <= ?)",
        [period[1], period[0]],
    )


def _where(
    resource_type: str | None,
    resource_id: str | None,
    before: int | None,
    since: str | None,
    at: Period | None = None,
) -> tuple[str, list[object]]:
    """The WHERE clause shared by history pages and their totals (``resource_history h``)."""
    where: list[str] = []
    params: list[object] = []
    for column, value, op in (
        ("resource_type", resource_type, "="),
        ("resource_id", resource_id, "="),
        ("notification_id", before, "<"),
        ("last_updated", since, ">="),
    ):
        if value is not None:
            where.append(f"h.{column} {op} ?")
            params.append(value)
    if at is not None:
        clause, values = current_during("h", at)
        where.append(clause)
        params += values
    return (f"WHERE {' AND '.join(where)}" if where else ""), params


def stored_bytes(value: object) -> bytes | None:
    if value is None:
        return None
    assert isinstance(value, bytes | bytearray | memoryview)
    return bytes(value)


def current_page(
    tx: Tx, resource_type: str, *, after_id: str = "", since: str | None = None, limit: int = 1000
) -> list[tuple[str, bytes]]:
    """One keyset page of current (not deleted) resources of a type, by id: (id, stored bytes)."""
    since_clause, params = ("AND last_updated >= ? ", [since]) if since else ("", [])
    rows = tx.execute(
        "SELECT resource_id, body FROM resources WHERE resource_type = ? AND resource_id > ? AND body IS NOT NULL "
        f"{since_clause}ORDER BY resource_id LIMIT ?",
        (resource_type, after_id, *params, limit),
    ).fetchall()
    return [(str(row[0]), bytes(row[1])) for row in rows]


def compartment_page(
    tx: Tx,
    resource_type: str,
    patients: list[str] | None,
    *,
    after_id: str = "",
    since: str | None = None,
    limit: int = 1000,
) -> list[tuple[str, bytes]]:
    """Like :func:`current_page`, limited to resources in patient compartments (all, or ``patients``)."""
    conditions = ["r.resource_type = ?", "r.resource_id > ?", "r.body IS NOT NULL"]
    params: list[object] = [resource_type, after_id]
    if since:
        conditions.append("r.last_updated >= ?")
        params.append(since)
    if patients is not None:
        conditions.append(f"c.patient_id IN ({', '.join('?' for _ in patients)})")
        params.extend(patients)
    rows = tx.execute(
        "SELECT DISTINCT r.resource_id, r.body FROM resources r JOIN resource_compartments c "
        "ON c.resource_type = r.resource_type AND c.resource_id = r.resource_id "
        f"WHERE {' AND '.join(conditions)} ORDER BY r.resource_id LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [(str(row[0]), bytes(row[1])) for row in rows]


def types_present(tx: Tx) -> list[str]:
    return [str(row[0]) for row in tx.execute("SELECT DISTINCT resource_type FROM resources ORDER BY 1").fetchall()]
