"""As-of reads (DESIGN.md "Time"): what a resource held at a recorded instant, from the version history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ehr_core.application import format_instant
from projections.db import Tx
from projections.resources import Period, StoredResource
from projections.search.dates import date_range

__all__ = ["normalise_instant", "period_of", "read_as_of"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_of(value: str) -> Period:
    """A history ``_at`` value as the recorded-time period it names, ``[start, end)``: R4 http.html#history
    reads it "as for search" (search.html#date), so ``2024-04`` is all of April 2024 and an instant is one
    microsecond. ValueError when it is not a FHIR date, dateTime or instant."""
    low, high = date_range(value.strip().replace(" ", "+"))
    start = _EPOCH + timedelta(microseconds=low)
    try:
        end = _EPOCH + timedelta(microseconds=high + 1)
    except OverflowError:  # open past the year 9999
        end = datetime.max.replace(tzinfo=UTC)
    return format_instant(start), format_instant(end)


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
