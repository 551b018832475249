"""Erasure in the views: a blocked or shredded patient's rows leave every projection.

The projector meets an :class:`ehr_core.privacy.Erasure` event in the log and calls :func:`erase` with every
view of its batch. A view may define ``erase(tx, dialect, erasure)``; any other view is handled generically,
from its declared tables:

1. rows of a table with ``(resource_type, resource_id)`` or ``(target_type, target_id)`` columns naming an
   erased resource are deleted, after noting their ``sid`` / ``notification_id`` values;
2. rows of the view's other tables whose ``sid`` / ``notification_id`` is one of those are deleted too
   (search value tables by sid, provenance references by notification id).

:class:`PrivacyView` keeps what may be said about the erased afterwards (no clinical content): which
``Type/id`` were blocked or shredded, so reads answer 403 or 410 instead of 404.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ehr_core.keys import Blocked, Erased
from ehr_core.privacy import Erasure as ErasureEvent
from projections.changes import Change
from projections.db import Dialect, Tx
from projections.view import View

__all__ = ["Erasure", "PrivacyView", "check_erased", "erase", "erasure_from_event"]

_PAIRS = (("resource_type", "resource_id"), ("target_type", "target_id"))
_LINKS = ("sid", "notification_id")


@dataclass(frozen=True)
class Erasure:
    notification_id: int
    patient: str
    #: ``blocked`` or ``shredded``.
    status: str
    recorded: str
    resources: list[tuple[str, str]]


def erasure_from_event(notification_id: int, event: Any) -> Erasure | None:
    if isinstance(event, ErasureEvent.Shredded):
        status = "shredded"
    elif isinstance(event, ErasureEvent.Blocked):
        status = "blocked"
    else:
        return None
    resources = [(str(r[0]), str(r[1])) for r in event.resources]
    if ("Patient", event.patient) not in resources:
        resources.append(("Patient", event.patient))
    return Erasure(notification_id, event.patient, status, event.timestamp.isoformat(), resources)


def _columns(tx: Tx, dialect: Dialect, table: str) -> list[str]:
    if dialect == "postgres":
        rows = tx.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "AND table_schema = current_schema() ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        return [str(r[0]) for r in rows]
    return [str(r[1]) for r in tx.execute(f"PRAGMA table_info({table})").fetchall()]


def _erase_generic(tx: Tx, dialect: Dialect, view: View, resources: Sequence[tuple[str, str]]) -> None:
    linked: dict[str, set[Any]] = {link: set() for link in _LINKS}
    columns = {table: _columns(tx, dialect, table) for table in view.tables}
    done: set[str] = set()
    for table, names in columns.items():
        pair = next((p for p in _PAIRS if p[0] in names and p[1] in names), None)
        if pair is None:
            continue
        where = f"{pair[0]} = ? AND {pair[1]} = ?"
        for link in _LINKS:
            if link in names:
                for resource in resources:
                    linked[link].update(
                        r[0] for r in tx.execute(f"SELECT {link} FROM {table} WHERE {where}", resource).fetchall()
                    )
        tx.executemany(f"DELETE FROM {table} WHERE {where}", list(resources))
        if pair == _PAIRS[0]:
            # Keyed by the resource: nothing of it is left. A table matched by its reference target
            # (``search_reference``, ``search_composite``) also holds the erased resources' own rows by
            # ``sid``, pointing anywhere: those go by link below.
            done.add(table)
    for table, names in columns.items():
        if table in done:
            continue
        for link in _LINKS:
            if link in names and linked[link]:
                tx.executemany(f"DELETE FROM {table} WHERE {link} = ?", [(v,) for v in linked[link]])


def erase(tx: Tx, dialect: Dialect, views: Sequence[View], erasure: Erasure) -> None:
    """Drop the erased resources from every view (in the projector's transaction)."""
    for view in views:
        custom = getattr(view, "erase", None)
        if custom is not None:
            custom(tx, dialect, erasure)
        else:
            _erase_generic(tx, dialect, view, erasure.resources)


class PrivacyView(View):
    """Which resources were blocked or shredded, and the patients concerned (no clinical content)."""

    tables = ("erased_resources", "erased_patients")

    def create(self, tx: Tx, dialect: Dialect) -> None:
        tx.execute(
            """CREATE TABLE IF NOT EXISTS erased_resources (
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                patient_id TEXT NOT NULL,
                status TEXT NOT NULL,
                notification_id BIGINT NOT NULL,
                PRIMARY KEY (resource_type, resource_id))"""
        )
        tx.execute(
            """CREATE TABLE IF NOT EXISTS erased_patients (
                patient_id TEXT PRIMARY KEY,
                status TEXT NOT NULL,
                recorded TEXT NOT NULL,
                notification_id BIGINT NOT NULL)"""
        )

    def apply(self, tx: Tx, changes: Sequence[Change]) -> None:
        return None

    def erase(self, tx: Tx, dialect: Dialect, erasure: Erasure) -> None:
        tx.executemany(
            "INSERT INTO erased_resources (resource_type, resource_id, patient_id, status, notification_id) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (resource_type, resource_id) DO UPDATE SET "
            "patient_id = excluded.patient_id, status = excluded.status, notification_id = excluded.notification_id",
            [(t, i, erasure.patient, erasure.status, erasure.notification_id) for t, i in erasure.resources],
        )
        tx.execute(
            "INSERT INTO erased_patients (patient_id, status, recorded, notification_id) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (patient_id) DO UPDATE SET status = excluded.status, recorded = excluded.recorded, "
            "notification_id = excluded.notification_id",
            (erasure.patient, erasure.status, erasure.recorded, erasure.notification_id),
        )


def check_erased(tx: Tx, resource_type: str, resource_id: str) -> None:
    """Raise 410 (shredded) or 403 (blocked) for an erased resource; return quietly otherwise."""
    row = tx.execute(
        "SELECT status FROM erased_resources WHERE resource_type = ? AND resource_id = ?",
        (resource_type, resource_id),
    ).fetchone()
    if row is None:
        return
    if row[0] == "shredded":
        raise Erased(
            f"{resource_type}/{resource_id} was erased: its patient's record was crypto-shredded and cannot be read"
        )
    raise Blocked(
        f"{resource_type}/{resource_id} is blocked: its patient filed an ARCO cancellation request; the record is "
        "retained under NOM-004-SSA3-2012 and may not be disclosed"
    )
