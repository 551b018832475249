"""As-of reads (DESIGN.md "Time"): what a resource held at a recorded instant, from the version history."""

from __future__ import annotations

from datetime import datetime

from ehr_core.application import format_instant
from projections.db import Tx
from projections.resources import StoredResource

__all__ = ["normalise_instant", "read_as_of"]


def normalise_instant(value: str) -> str:
    """An ISO instant with an offset (``Z`` allowed) as the history stores it; ValueError otherwise."""
    moment = datetime.fromisoformat(value.strip().replace(" ", "+"))
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone offset")
    return format_instant(moment)


def read_as_of(tx: Tx, resource_type: str, resource_id: str, instant: str) -> StoredResource | None:
    """The version current at ``instant`` (normalised): the last one recorded at or before it."""
    row = tx.execute(
        "SELECT version, last_updated, body FROM resource_history "
        "WHERE resource_type = ? AND resource_id = ? AND last_updated <= ? "
        "ORDER BY version DESC LIMIT 1",
        (resource_type, resource_id, instant),
    ).fetchone()
    if row is None:
        return None
    body = bytes(row[2]) if row[2] is not None else None
    return StoredResource(resource_type, resource_id, int(row[0]), str(row[1]), body)
