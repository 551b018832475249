"""The master patient index service: match a changed Patient record, and a data steward's link and unlink.

Candidates come from the caller (a read model blocks on CURP, birth date and surnames); this module decides
and appends. Every decision saves the record's :class:`Membership` and the persons it touches in one atomic
append; a record version already matched appends nothing (idempotent, so a follower may replay safely).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, project_aggregate
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording

from ehr_core.errors import Conflict, NotFound, Unprocessable
from ehr_core.identity.features import Features
from ehr_core.identity.matching import POSSIBLE, Grade, Match, compare
from ehr_core.identity.person import Membership, Person, membership_id, new_person_id

__all__ = ["Candidate", "MasterPatientIndex", "Outcome", "rank"]


@dataclass(frozen=True)
class Candidate:
    record: str  # Patient/id
    person: str
    features: Features


@dataclass(frozen=True)
class Outcome:
    record: str
    person: str
    match: Match | None = None
    #: Persons (id, score) this record was flagged against for review.
    flagged: list[tuple[str, float]] = field(default_factory=list)
    appended: bool = False


def rank(features: Features, candidates: Sequence[Candidate], exclude: set[str]) -> list[tuple[str, Match]]:
    """Best match per person, best first (certain before any score)."""
    best: dict[str, Match] = {}
    for candidate in candidates:
        if candidate.person in exclude or not candidate.person:
            continue
        match = compare(features, candidate.features)
        known = best.get(candidate.person)
        if known is None or match.score > known.score:
            best[candidate.person] = match
    return sorted(best.items(), key=lambda item: (-item[1].score, item[0]))


class MasterPatientIndex:
    def __init__(self, application: Application[UUID]) -> None:
        self.application = application
        #: Between :meth:`begin` and :meth:`flush`: the aggregates decided on but not yet saved.
        self._session: dict[UUID, Aggregate] | None = None
        #: Between :meth:`begin` and :meth:`flush`: aggregates read ahead by :meth:`preload` (None: no such stream).
        self._loaded: dict[UUID, Aggregate | None] = {}

    # -- a batch of decisions, saved together (the identity projector's batches) -----------------

    def begin(self) -> None:
        """Decide several records, then save every decision in one append (:meth:`flush`)."""
        self._session = {}
        self._loaded = {}

    def preload(self, records: Iterable[str]) -> None:
        """Within a batch: read the Membership streams of ``records`` in one query, so deciding each record
        reads none (a projection batch of N Patients made N reads, one round trip each, while it held the
        identity projection's tracking row that every create waits on for read-your-writes).

        A stream read here may change before :meth:`flush` (a data steward's link): the flush then fails on
        its version like any decision read earlier, and the caller decides again one by one. Only where the
        event store reads several streams at once (PostgreSQL) and keeps no snapshots or cache to consult."""
        select = getattr(self.application.recorder, "select_streams", None)
        repository = self.application.repository
        if self._session is None or select is None or repository.snapshot_store is not None or repository.cache:
            return
        wanted = [key for key in dict.fromkeys(membership_id(record) for record in records) if key not in self._session]
        if not wanted:
            return
        events: dict[UUID, list[Any]] = {key: [] for key in wanted}
        mapper = self.application.mapper
        for stored in select(wanted):
            events[UUID(str(stored.originator_id))].append(mapper.to_domain_event(stored))
        for key, found in events.items():
            self._loaded[key] = project_aggregate(None, found)

    def flush(self) -> list[Recording[UUID]] | None:
        """Save what was decided since :meth:`begin`: the recordings of the events appended (empty: nothing
        to append), or None if another writer got there first (nothing saved). The recordings hold the
        decisions themselves, so the caller need not read them back from the log it just wrote."""
        session, self._session = self._session, None
        self._loaded = {}
        if not session:
            return []
        try:
            recordings: list[Recording[UUID]] = self.application.save(*session.values())
        except IntegrityError:
            return None
        return recordings

    def abandon(self) -> None:
        self._session = None
        self._loaded = {}

    # -- loading ---------------------------------------------------------------------------------

    def _get(self, aggregate_id: UUID) -> Any:
        if self._session is not None and aggregate_id in self._session:
            return self._session[aggregate_id]  # decided earlier in this batch, not saved yet
        if self._session is not None and aggregate_id in self._loaded:
            return self._loaded[aggregate_id]  # read ahead for this batch (preload)
        try:
            return self.application.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def membership(self, record: str) -> Membership | None:
        found: Membership | None = self._get(membership_id(record))
        return found

    def person(self, person_id: str) -> Person | None:
        try:
            found: Person | None = self._get(UUID(person_id))
        except ValueError:
            return None
        return found if isinstance(found, Person) else None

    def _save(self, *aggregates: Aggregate) -> bool:
        try:
            self.application.save(*aggregates)
        except IntegrityError:
            return False
        return True

    # -- matching --------------------------------------------------------------------------------

    def record_changed(
        self,
        record: str,
        version: int,
        features: Features | None,
        candidates: Sequence[Candidate],
        by: str = "mpi",
    ) -> Outcome:
        """Match version ``version`` of ``record`` (None features: the record was deleted)."""
        membership = self.membership(record)
        if membership is not None and membership.matched_version >= version:
            return Outcome(record, membership.person)
        if membership is None:
            membership = Membership.open(record)
        current = self.person(membership.person) if membership.person else None
        touched: list[Aggregate] = [membership]
        if features is None:
            if current is not None:
                current.unlink(record, by, "record deleted")
                touched.append(current)
            membership.assign("", version)
            return self._finish(record, touched, Outcome(record, "", appended=True))
        if current is not None and len(current.records) > 1:
            # Already linked with other records: a new version keeps its person (a steward may unlink).
            membership.assign(str(current.id), version)
            return self._finish(record, touched, Outcome(record, str(current.id), appended=True))
        exclude = set(membership.separated) | ({str(current.id)} if current is not None else set())
        ranked = rank(features, [c for c in candidates if c.record != record], exclude)
        if ranked and ranked[0][1].linkable:
            person_id, match = ranked[0]
            target = self.person(person_id)
            if target is None:
                raise NotFound(f"person {person_id} is not known")
            target.link(record, match.method, match.score, by)
            touched.append(target)
            if current is not None:
                current.unlink(record, by, f"linked to person {person_id}")
                touched.append(current)
            membership.assign(person_id, version)
            return self._finish(record, touched, Outcome(record, person_id, match, appended=True))
        if current is None:
            current = Person.enrol(new_person_id(record, membership.version), record, by)
            touched.append(current)
        flagged = []
        for person_id, match in ranked:
            if match.score < POSSIBLE or match.grade == Grade.CERTAINLY_NOT:
                break
            candidate = self.person(person_id)
            if candidate is not None and record not in candidate.flagged:
                candidate.flag(record, match.score)
                touched.append(candidate)
                flagged.append((person_id, match.score))
        membership.assign(str(current.id), version)
        best = ranked[0][1] if ranked else None
        return self._finish(record, touched, Outcome(record, str(current.id), best, flagged, appended=True))

    def _finish(self, record: str, touched: list[Aggregate], outcome: Outcome) -> Outcome:
        if self._session is not None:
            for aggregate in touched:
                self._session[aggregate.id] = aggregate
            return outcome
        if self._save(*touched):
            return outcome
        # Another follower matched this version first: its decision stands.
        membership = self.membership(record)
        return Outcome(record, membership.person if membership else "")

    # -- a data steward's decisions --------------------------------------------------------------

    def link(self, record: str, person_id: str, by: str, score: float = 0.0) -> str:
        """Put ``record`` into ``person_id`` (confirming a possible match, or any manual link)."""
        membership = self.membership(record)
        target = self.person(person_id)
        if membership is None:
            raise NotFound(f"{record} is not in the master patient index")
        if target is None or not target.records:
            raise NotFound(f"person {person_id} is not known")
        if membership.person == person_id:
            return person_id
        touched: list[Aggregate] = [membership, target]
        current = self.person(membership.person) if membership.person else None
        if current is not None:
            current.unlink(record, by, f"linked to person {person_id} by a data steward")
            touched.append(current)
        target.link(record, "manual", score or target.flagged.get(record, 0.0), by)
        separated = [p for p in membership.separated if p != person_id]
        membership.assign(person_id, membership.matched_version, separated)
        if not self._save(*touched):
            raise Conflict(f"{record} changed at the same time; try again")
        return person_id

    def unlink(self, record: str, by: str, reason: str = "link undone by a data steward") -> str:
        """Undo a link: ``record`` leaves its person for a new one of its own, and is never re-linked to it
        automatically. Returns the new person's id."""
        membership = self.membership(record)
        if membership is None or not membership.person:
            raise NotFound(f"{record} is not in the master patient index")
        current = self.person(membership.person)
        if current is None or len(current.records) < 2:
            raise Unprocessable(f"{record} is not linked to any other record")
        current.unlink(record, by, reason)
        own = Person.enrol(new_person_id(record, membership.version), record, by)
        membership.assign(str(own.id), membership.matched_version, [*membership.separated, str(current.id)])
        if not self._save(membership, current, own):
            raise Conflict(f"{record} changed at the same time; try again")
        return str(own.id)

    def dismiss(self, record: str, person_id: str, by: str) -> None:
        """A possible match reviewed and rejected: leave the queue, never auto-link the two."""
        membership = self.membership(record)
        candidate = self.person(person_id)
        if membership is None or candidate is None:
            raise NotFound(f"{record} or person {person_id} is not known")
        candidate.dismiss(record, by)
        membership.assign(membership.person, membership.matched_version, [*membership.separated, person_id])
        if not self._save(membership, candidate):
            raise Conflict(f"{record} changed at the same time; try again")
