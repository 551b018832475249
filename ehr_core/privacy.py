"""Blocking and crypto-shredding a patient's record (DESIGN.md "Keys, encryption, erasure"; DOMAIN.md norms).

- **Retention first** (NOM-004-SSA3-2012): a record is kept at least 5 years after the patient's last
  recorded act. Until then, shredding is refused unless forced with a recorded legal basis (a court order).
- **ARCO cancellation** (LGPDPPSO) during retention is a *block*: the key stays, the events stay readable to
  the log, writes are refused and every projection drops the patient's rows; reads answer 403.
- **Shredding** destroys the compartment's data key: every event of the patient stays in the log (the ledger,
  which hashes stored bytes, still verifies) but can never be decrypted again; reads answer 410.

Both are recorded as events (an :class:`Erasure` aggregate, under the system key, with no clinical content:
the patient id, the legal basis, who, and the list of ``Type/id`` the projections must drop).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from eventsourcing.domain import Aggregate

from ehr_core.context import WriteContext
from ehr_core.errors import NotFound, RecordError
from ehr_core.streams import ResourceStream

__all__ = ["Erasure", "ErasureReport", "Privacy", "RetentionActive", "retention_ends"]

RETENTION_YEARS = 5


class RetentionActive(RecordError):
    """NOM-004 retention has not ended: shredding needs ``force`` and a legal basis."""

    category = "conflict"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="business-rule")


def retention_ends(last_act: datetime) -> datetime:
    try:
        return last_act.replace(year=last_act.year + RETENTION_YEARS)
    except ValueError:  # 29 February
        return last_act.replace(year=last_act.year + RETENTION_YEARS, day=28)


class Erasure(Aggregate):
    """One block or shredding of one patient's record (one stream each, never loaded back)."""

    class Blocked(Aggregate.Created):
        patient: str
        legal_basis: str
        context: dict[str, Any]
        resources: list[list[str]]
        forgets_key: str
        retained_until: str

    class Shredded(Aggregate.Created):
        patient: str
        legal_basis: str
        forced: bool
        context: dict[str, Any]
        resources: list[list[str]]
        forgets_key: str
        retained_until: str

    def __init__(self, **_: Any) -> None:
        pass


@dataclass(frozen=True)
class ErasureReport:
    patient: str
    action: str
    resources: list[tuple[str, str]]
    events: int
    last_act: datetime | None
    retained_until: datetime | None
    forced: bool
    notification_id: int | None


class Privacy:
    """Block and shred through the record application (which owns the key store and the mapper)."""

    def __init__(self, application: Any) -> None:
        self.application = application
        self.keys = application.keys

    def scan(self, patient: str) -> tuple[list[tuple[str, str]], int, datetime | None]:
        """Every resource with an event under the patient's key, how many events, and the last act."""
        key_id = self.keys.key_id_of(patient)
        if key_id is None:
            return [], 0, None
        from ehr_core.encryption import stored_key_id

        resources: dict[tuple[str, str], None] = {}
        events, last_act = 0, None
        for notification in self._notifications():
            if stored_key_id(notification.state) != key_id:
                continue
            event = self.application.mapper.to_domain_event(notification)
            if isinstance(event, ResourceStream.Started | ResourceStream.Revised | ResourceStream.Retracted):
                events += 1
                resources[(event.resource_type, event.resource_id)] = None
                if last_act is None or event.timestamp > last_act:
                    last_act = event.timestamp
        return list(resources), events, last_act

    def _notifications(self, page: int = 2000) -> Iterator[Any]:
        start = 1
        recorder = self.application.recorder
        while True:
            batch = recorder.select_notifications(start=start, limit=page)
            if not batch:
                return
            yield from batch
            start = batch[-1].id + 1

    def _check_known(self, patient: str) -> Any:
        row = self.keys.row(patient)
        if row is None:
            raise NotFound(f"Patient/{patient} has no record here (no data key)")
        return row

    def block(self, patient: str, legal_basis: str, context: WriteContext) -> ErasureReport:
        """ARCO cancellation during retention: refuse writes, drop from projections, keep the key."""
        if not legal_basis.strip():
            raise RecordError("a block needs the request it answers (legal basis)", code="required")
        row = self._check_known(patient)
        if row.status == "shredded":
            raise NotFound(f"Patient/{patient} was already erased")
        self.keys.set_status(patient, "blocked")
        resources, events, last_act = self.scan(patient)
        until = retention_ends(last_act) if last_act else None
        erasure = Erasure._create(
            Erasure.Blocked,
            id=uuid4(),
            patient=patient,
            legal_basis=legal_basis,
            context=context.as_dict() | {"interaction": "arco-cancellation"},
            resources=[list(r) for r in resources],
            forgets_key=row.key_id.hex(),
            retained_until=until.isoformat() if until else "",
        )
        recordings = self.application.save(erasure)
        return ErasureReport(
            patient, "blocked", resources, events, last_act, until, False, recordings[-1].notification.id
        )

    def shred(
        self,
        patient: str,
        legal_basis: str,
        context: WriteContext,
        force: bool = False,
        now: datetime | None = None,
    ) -> ErasureReport:
        """Destroy the patient's data key after recording why; refused during retention unless forced."""
        if not legal_basis.strip():
            raise RecordError("shredding needs a legal basis", code="required")
        row = self._check_known(patient)
        if row.status == "shredded":
            raise NotFound(f"Patient/{patient} was already erased")
        now = now or datetime.now(UTC)
        resources, events, last_act = self.scan(patient)
        until = retention_ends(last_act) if last_act else None
        if until is not None and now < until and not force:
            raise RetentionActive(
                f"Patient/{patient}: NOM-004 retention runs until {until.date().isoformat()} (last act "
                f"{last_act.date().isoformat() if last_act else '?'}); an ARCO cancellation blocks instead. "
                "Shredding now needs --force and the legal basis that orders it"
            )
        # 1. no new writes; 2. the final list; 3. record the erasure; 4. destroy the key.
        self.keys.mark_shredding(patient)
        resources, events, last_act = self.scan(patient)
        erasure = Erasure._create(
            Erasure.Shredded,
            id=uuid4(),
            patient=patient,
            legal_basis=legal_basis,
            forced=bool(force and until is not None and now < until),
            context=context.as_dict() | {"interaction": "shred"},
            resources=[list(r) for r in resources],
            forgets_key=row.key_id.hex(),
            retained_until=until.isoformat() if until else "",
        )
        recordings = self.application.save(erasure)
        self.keys.shred(patient)
        return ErasureReport(
            patient,
            "shredded",
            resources,
            events,
            last_act,
            until,
            bool(force and until is not None and now < until),
            recordings[-1].notification.id,
        )
