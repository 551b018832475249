"""Provenance: one FHIR ``Provenance`` per write, derived from the event's context (who, where, why, when).

A view of the ``resources`` projector, so every write's Provenance is there as soon as the write is
visible. Own tables (a rebuild recreates them exactly: ids and bodies depend only on the event):

- ``provenance``: the Provenance JSON to serve, per clinical event;
- ``provenance_refs``: (event, parameter, value) for ``target``, ``patient`` and ``agent``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import orjson

from projections.changes import Change
from projections.db import Dialect, Tx
from projections.view import View

__all__ = ["ProvenanceView", "StoredProvenance", "provenance_for_patient", "provenance_id", "search_provenance"]

CLUES = "urn:oid:2.16.840.1.113883.4.631"
_NAMESPACE = uuid5(NAMESPACE_URL, "urn:ehr-core:provenance")
_ACTIVITY = {"POST": "CREATE", "PUT": "UPDATE", "PATCH": "UPDATE", "DELETE": "DELETE"}


def provenance_id(resource_type: str, resource_id: str, version: int) -> str:
    return str(uuid5(_NAMESPACE, f"{resource_type}/{resource_id}/_history/{version}"))


def provenance_resource(change: Change) -> dict[str, Any]:
    context = change.context
    institution = str(context.get("institution", "unknown"))
    user = str(context.get("user", "anonymous"))
    activity = "CREATE" if change.version == 1 else _ACTIVITY[change.method]
    author: dict[str, Any] = {
        "type": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}
            ]
        },
        "who": {"identifier": {"system": f"urn:ehr-core:user:{institution}", "value": user}, "display": user},
        "onBehalfOf": {"identifier": {"system": "urn:ehr-core:institution", "value": institution}},
    }
    if context.get("role"):
        author["role"] = [{"coding": [{"system": "urn:ehr-core:role", "code": str(context["role"])}]}]
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id(change.resource_type, change.resource_id, change.version),
        "meta": {"lastUpdated": change.last_updated},
        "target": [{"reference": f"{change.resource_type}/{change.resource_id}/_history/{change.version}"}],
        "recorded": change.last_updated,
        "activity": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": activity}],
            "text": str(context.get("interaction", activity.lower())),
        },
        "reason": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": context.get("purpose", "TREAT"),
                    }
                ]
            }
        ],
        "agent": [author],
    }
    if context.get("unit"):
        resource["location"] = {"identifier": {"system": CLUES, "value": str(context["unit"])}}
    if context.get("request_id"):
        resource["entity"] = [
            {
                "role": "source",
                "what": {"identifier": {"system": "urn:ehr-core:request", "value": context["request_id"]}},
            }
        ]
    return resource


class ProvenanceView(View):
    tables = ("provenance_refs", "provenance")
    query_indexes = ("provenance_refs_lookup",)

    def create(self, tx: Tx, dialect: Dialect) -> None:
        blob = "BYTEA" if dialect == "postgres" else "BLOB"
        tx.execute(
            f"""CREATE TABLE IF NOT EXISTS provenance (
                notification_id BIGINT PRIMARY KEY,
                id TEXT NOT NULL,
                target_type TEXT NOT NULL,
                target_id TEXT NOT NULL,
                target_version BIGINT NOT NULL,
                recorded TEXT NOT NULL,
                method TEXT NOT NULL,
                context TEXT NOT NULL,
                body {blob} NOT NULL)"""
        )
        tx.execute("CREATE UNIQUE INDEX IF NOT EXISTS provenance_id ON provenance (id)")
        tx.execute(
            "CREATE TABLE IF NOT EXISTS provenance_refs "
            "(notification_id BIGINT NOT NULL, param TEXT NOT NULL, value TEXT NOT NULL)"
        )
        tx.execute(
            "CREATE INDEX IF NOT EXISTS provenance_refs_lookup ON provenance_refs (param, value, notification_id)"
        )

    def apply(self, tx: Tx, changes: Sequence[Change]) -> None:
        rows, refs = [], []
        for change in changes:
            resource = provenance_resource(change)
            rows.append(
                (
                    change.notification_id,
                    resource["id"],
                    change.resource_type,
                    change.resource_id,
                    change.version,
                    change.last_updated,
                    change.method,
                    orjson.dumps(change.context).decode(),
                    orjson.dumps(resource),
                )
            )
            target = f"{change.resource_type}/{change.resource_id}"
            nid = change.notification_id
            refs += [(nid, "target", target), (nid, "target", f"{target}/_history/{change.version}")]
            patients = list(dict.fromkeys(change.compartment))
            if change.resource_type == "Patient" and change.resource_id not in patients:
                patients.append(change.resource_id)
            refs += [(nid, "patient", f"Patient/{p}") for p in patients]
            user, institution = change.context.get("user", "anonymous"), change.context.get("institution", "unknown")
            refs += [
                (nid, "agent", str(user)),
                (nid, "agent", f"urn:ehr-core:user:{institution}|{user}"),
                (nid, "agent", f"urn:ehr-core:institution|{institution}"),
            ]
        tx.insert(
            "provenance",
            (
                "notification_id",
                "id",
                "target_type",
                "target_id",
                "target_version",
                "recorded",
                "method",
                "context",
                "body",
            ),
            rows,
        )
        tx.insert("provenance_refs", ("notification_id", "param", "value"), refs)


# -- queries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredProvenance:
    notification_id: int
    resource_id: str
    target_type: str
    target_id: str
    target_version: int
    recorded: str
    method: str
    context: dict[str, Any]
    body: bytes


_COLUMNS = (
    "p.notification_id, p.id, p.target_type, p.target_id, p.target_version, p.recorded, p.method, p.context, p.body"
)


def _stored(row: tuple[Any, ...]) -> StoredProvenance:
    return StoredProvenance(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        int(row[4]),
        str(row[5]),
        str(row[6]),
        orjson.loads(row[7]),
        bytes(row[8]),
    )


def read_provenance(tx: Tx, resource_id: str) -> StoredProvenance | None:
    row = tx.execute(f"SELECT {_COLUMNS} FROM provenance p WHERE p.id = ?", (resource_id,)).fetchone()
    return _stored(row) if row else None


def search_provenance(
    tx: Tx,
    refs: dict[str, list[str]],
    dates: list[tuple[str, str]],
    before: int | None,
    limit: int,
    policy: tuple[str, list[Any]] | None = None,
) -> list[StoredProvenance]:
    """Newest first; ``refs`` ORs values within a parameter and ANDs parameters; ``policy`` is the
    access policy's SQL condition on the row ``p`` (None: auth off)."""
    where: list[str] = [policy[0]] if policy is not None else []
    params: list[Any] = list(policy[1]) if policy is not None else []
    for param, values in refs.items():
        marks = ", ".join("?" * len(values))
        where.append(
            "p.notification_id IN (SELECT r.notification_id FROM provenance_refs r "
            f"WHERE r.param = ? AND r.value IN ({marks}))"
        )
        params += [param, *values]
    for operator, value in dates:
        where.append(f"p.recorded {operator} ?")
        params.append(value)
    if before is not None:
        where.append("p.notification_id < ?")
        params.append(before)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM provenance p {clause} ORDER BY p.notification_id DESC LIMIT ?", (*params, limit)
    ).fetchall()
    return [_stored(r) for r in rows]


def provenance_for_patient(
    tx: Tx, patient_id: str, since: str | None = None, until: str | None = None
) -> list[StoredProvenance]:
    """Every write to ``Patient/{patient_id}``'s record, oldest first."""
    params: list[Any] = [f"Patient/{patient_id}"]
    extra = ""
    if since:
        extra += " AND p.recorded >= ?"
        params.append(since)
    if until:
        extra += " AND p.recorded <= ?"
        params.append(until)
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM provenance p WHERE p.notification_id IN (SELECT r.notification_id FROM "
        f"provenance_refs r WHERE r.param = 'patient' AND r.value = ?){extra} ORDER BY p.notification_id",
        params,
    ).fetchall()
    return [_stored(r) for r in rows]
