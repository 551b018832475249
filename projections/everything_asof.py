"""``$everything`` as of a recorded instant (``Patient/[id]/$everything?_at=``): the record as it was then.

DESIGN.md "Time": "what did the record say at 10:00 on 9 April" is answered from recorded time. The
resources of the patients' compartments at that instant are each one's version current then
(:func:`projections.asof.read_as_of`), not deleted then, whose own content placed it in one of those
compartments (:func:`ehr_core.compartment.patient_compartment` of that version). The candidates are the
resources in the compartments now, and every resource with a version recorded after the instant — a
resource in the compartment then that has since moved to another patient or been deleted is one of
those — so the cost grows with what changed since the instant, and nothing that was there is missed.
Resources a version references are included, as of the same instant, when that version is in no
patient's compartment (as :func:`projections.identity.referenced_resources` does for the current record).
Each entry keeps the institution and unit of its current source (``resource_sources``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ehr_core.compartment import patient_compartment
from ehr_core.resources import json as fhir_json
from projections.access import Viewer, visible_ids
from projections.db import Tx

__all__ = ["everything_as_of", "referenced_as_of"]

#: (notification id of the version, type, id, stored bytes, institution, unit): ``everything_page``'s rows.
Row = tuple[int, str, str, bytes, str, str | None]


def _version(tx: Tx, resource_type: str, resource_id: str, instant: str) -> tuple[int, bytes] | None:
    """The version of ``Type/id`` current at ``instant`` (its notification id and bytes); None when it did
    not exist yet or was deleted then."""
    row = tx.execute(
        "SELECT notification_id, body FROM resource_history WHERE resource_type = ? AND resource_id = ? "
        "AND last_updated <= ? ORDER BY version DESC LIMIT 1",
        (resource_type, resource_id, instant),
    ).fetchone()
    if row is None or row[1] is None:
        return None
    return int(row[0]), bytes(row[1])


def _sources(tx: Tx, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str | None]]:
    found: dict[tuple[str, str], tuple[str, str | None]] = {}
    for start in range(0, len(keys), 200):
        chunk = keys[start : start + 200]
        pairs = " OR ".join("(resource_type = ? AND resource_id = ?)" for _ in chunk)
        rows = tx.execute(
            f"SELECT resource_type, resource_id, institution, unit FROM resource_sources WHERE {pairs}",
            [value for key in chunk for value in key],
        ).fetchall()
        found.update({(str(r[0]), str(r[1])): (str(r[2] or "unknown"), r[3]) for r in rows})
    return found


def _visible(tx: Tx, viewer: Viewer | None, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    if viewer is None:
        return set(keys)
    by_type: dict[str, list[str]] = {}
    for resource_type, resource_id in keys:
        by_type.setdefault(resource_type, []).append(resource_id)
    return {(t, i) for t, ids in by_type.items() for i in visible_ids(tx, viewer, t, ids)}


def _rows(tx: Tx, found: list[tuple[int, str, str, bytes]], viewer: Viewer | None) -> list[Row]:
    keys = [(t, i) for _, t, i, _ in found]
    allowed = _visible(tx, viewer, keys)
    sources = _sources(tx, keys)
    return [
        (nid, t, i, body, *sources.get((t, i), ("unknown", None)))
        for nid, t, i, body in sorted(found)
        if (t, i) in allowed
    ]


def everything_as_of(
    tx: Tx,
    patients: Sequence[str],
    instant: str,
    *,
    types: Sequence[str] | None = None,
    after: int = 0,
    limit: int = 100,
    viewer: Viewer | None = None,
) -> list[Row]:
    """The compartments of ``patients`` as they were at ``instant`` (normalised), by the notification id of
    each version after ``after``, at most ``limit``; with a ``viewer``, only what it may read."""
    marks = ", ".join("?" for _ in patients)
    candidates = {
        (str(r[0]), str(r[1]))
        for r in tx.execute(
            f"SELECT resource_type, resource_id FROM resource_compartments WHERE patient_id IN ({marks})", patients
        ).fetchall()
    }
    candidates |= {
        (str(r[0]), str(r[1]))
        for r in tx.execute(
            "SELECT DISTINCT resource_type, resource_id FROM resource_history WHERE last_updated > ?", (instant,)
        ).fetchall()
    }
    wanted = set(patients)
    found: list[tuple[int, str, str, bytes]] = []
    for resource_type, resource_id in candidates:
        if types and resource_type not in types:
            continue
        version = _version(tx, resource_type, resource_id, instant)
        if version is None or version[0] <= after:
            continue
        if wanted.intersection(patient_compartment(fhir_json.loads(version[1]))):
            found.append((version[0], resource_type, resource_id, version[1]))
    return _rows(tx, found, viewer)[:limit]


def referenced_as_of(
    tx: Tx,
    keys: Sequence[tuple[str, str]],
    instant: str,
    *,
    types: Sequence[str] | None = None,
    viewer: Viewer | None = None,
) -> list[Row]:
    """The resources ``keys`` name as they were at ``instant``, those then in no patient's compartment."""
    found: list[tuple[int, str, str, bytes]] = []
    for resource_type, resource_id in dict.fromkeys(keys):
        if types and resource_type not in types:
            continue
        version = _version(tx, resource_type, resource_id, instant)
        if version is not None and not patient_compartment(fhir_json.loads(version[1])):
            found.append((version[0], resource_type, resource_id, version[1]))
    return _rows(tx, found, viewer)
