"""The master patient index as event streams (DESIGN.md "Streams").

``Person``: one stream per person; events enrolment, record linked (method, score, who), record unlinked,
and a flag for a possible match waiting for review. ``Membership``: one stream per Patient record (id: UUIDv5
of ``Patient/id``) saying which person holds it, which Patient version the index last matched, and which
persons a data steward separated it from. Both change in one atomic save, so a record's membership and the
persons' streams never disagree, and the membership version makes matching a record version idempotent:
re-running it after a crash appends nothing twice.
"""

from __future__ import annotations

from typing import Any, cast
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

__all__ = ["Membership", "Person", "membership_id", "new_person_id"]

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:ehr-core:master-patient-index")


def membership_id(record: str) -> UUID:
    return uuid5(_NAMESPACE, f"membership/{record}")


def new_person_id(record: str, membership_version: int) -> UUID:
    """Deterministic: the person a record founds at a given point of its membership history."""
    return uuid5(_NAMESPACE, f"person/{record}/{membership_version}")


class Person(Aggregate):
    """One person: the Patient records (``Patient/id``) that are theirs, across institutions."""

    class Enrolled(Aggregate.Created):
        record: str
        by: str

    class Linked(Aggregate.Event):
        record: str
        method: str
        score: float
        by: str

        def apply(self, aggregate: Any) -> None:
            person = cast(Person, aggregate)
            person.records[self.record] = {"method": self.method, "score": self.score, "by": self.by}
            person.flagged.pop(self.record, None)

    class Unlinked(Aggregate.Event):
        record: str
        by: str
        reason: str

        def apply(self, aggregate: Any) -> None:
            cast(Person, aggregate).records.pop(self.record, None)

    class Flagged(Aggregate.Event):
        """A possible match: the record may be this person; a data steward decides."""

        record: str
        score: float

        def apply(self, aggregate: Any) -> None:
            cast(Person, aggregate).flagged[self.record] = self.score

    class Dismissed(Aggregate.Event):
        record: str
        by: str

        def apply(self, aggregate: Any) -> None:
            cast(Person, aggregate).flagged.pop(self.record, None)

    def __init__(self, record: str, by: str) -> None:
        self.records: dict[str, dict[str, Any]] = {record: {"method": "enrolment", "score": None, "by": by}}
        self.flagged: dict[str, float] = {}

    @classmethod
    def enrol(cls, person_id: UUID, record: str, by: str) -> Person:
        return cls._create(cls.Enrolled, id=person_id, record=record, by=by)

    def link(self, record: str, method: str, score: float, by: str) -> None:
        self.trigger_event(self.Linked, record=record, method=method, score=score, by=by)

    def unlink(self, record: str, by: str, reason: str) -> None:
        self.trigger_event(self.Unlinked, record=record, by=by, reason=reason)

    def flag(self, record: str, score: float) -> None:
        self.trigger_event(self.Flagged, record=record, score=score)

    def dismiss(self, record: str, by: str) -> None:
        self.trigger_event(self.Dismissed, record=record, by=by)


class Membership(Aggregate):
    """Which person holds one Patient record."""

    class Opened(Aggregate.Created):
        record: str

    class Assigned(Aggregate.Event):
        record: str
        person: str  # "" when the record is in no person (deleted)
        matched_version: int
        separated: list[str]

        def apply(self, aggregate: Any) -> None:
            membership = cast(Membership, aggregate)
            membership.person = self.person
            membership.matched_version = self.matched_version
            membership.separated = list(self.separated)

    def __init__(self, record: str) -> None:
        self.record = record
        self.person = ""
        self.matched_version = 0
        self.separated: list[str] = []

    @classmethod
    def open(cls, record: str) -> Membership:
        return cls._create(cls.Opened, id=membership_id(record), record=record)

    def assign(self, person: str, matched_version: int, separated: list[str] | None = None) -> None:
        self.trigger_event(
            self.Assigned,
            record=self.record,
            person=person,
            matched_version=matched_version,
            separated=self.separated if separated is None else separated,
        )
