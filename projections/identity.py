"""The master patient index, followed from the log: match Patient records as they change, keep its views.

:class:`IdentityIndex` follows the log with its own tracking row (``identity``), like the resource
projector: for each Patient version it updates ``mpi_records`` (features for blocking), asks
:class:`ehr_core.identity.index.MasterPatientIndex` to decide, and applies the person events it reads back
(``mpi_links``, ``mpi_review``). The MPI's appends are idempotent per Patient version (the record's
Membership stream), so a batch replayed after a crash appends nothing twice and the tracking position moves
only with the rows: exactly-once in effect. It also keeps ``resource_sources``: which institution and unit
wrote each current resource (for attribution in ``$everything`` and ``$summary``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.application import Application
from eventsourcing.persistence import Notification, Recording

from ehr_core.identity.features import Features, patient_features
from ehr_core.identity.index import Candidate, MasterPatientIndex
from ehr_core.identity.person import Membership, Person
from ehr_core.resources import json as fhir_json
from ehr_core.streams import ResourceStream
from projections.access import Viewer, visible_clause, with_consents
from projections.db import Tx, ViewDatabase
from projections.indexed import indexed
from projections.mpi_candidates import NONE, BatchCandidates
from projections.privacy import erasure_from_event
from projections.projector import Projector, Retry
from projections.resources import ResourceViews, StoredResource, stored_bytes

__all__ = ["IdentityIndex", "LinkRow", "Source", "everything_page"]

_NAME = "identity"
_TABLES = ("mpi_records", "mpi_links", "mpi_review", "resource_sources")
_NONE = NONE  # a blocking key no record has (keys are letters, digits and spaces)
#: Most candidates a record is compared with (those sharing a blocking key, by record id).
_CANDIDATES = 200


@dataclass(frozen=True)
class LinkRow:
    person: str
    record: str  # Patient id
    method: str
    score: float | None
    by: str


@dataclass(frozen=True)
class Source:
    institution: str
    unit: str | None


def _blocking(*names: str) -> tuple[str, ...]:
    """Names as the blocking indexes hold them: a bounded prefix (PostgreSQL b-tree rows are limited to
    ~2,700 bytes, and one Patient may carry a name of any length). Matching itself compares the full
    names, kept in ``features``."""
    return tuple(indexed(name) for name in names)


def _patient(record: str) -> str:
    return record.split("/", 1)[1] if record.startswith("Patient/") else record


class _DecisionsRaced(Retry):
    """The batch's MPI decisions could not be appended: another writer changed a person first."""


class IdentityIndex(Projector):
    """A projector of its own (tracking row ``identity``) whose batches also take MPI decisions."""

    def __init__(
        self,
        application: Application[UUID],
        database: ViewDatabase,
        batch_size: int = 500,
        name: str = _NAME,
        decisions: Application[UUID] | None = None,
    ) -> None:
        super().__init__(application, database, [], name=name, batch_size=batch_size)
        #: Where the MPI appends its decisions: this log, or the national log of a federation.
        self.mpi = MasterPatientIndex(decisions or application)

    @property
    def tables(self) -> tuple[str, ...]:
        return _TABLES

    # catch_up(until) is the base class's: a batch that reaches ``until`` also applies the Person and
    # Membership events it appended (``apply_notifications``), so the links a write caused are visible with
    # it (read-your-writes for identity) without one more transaction that finds nothing to apply.

    def beside(self, database: ViewDatabase) -> IdentityIndex:
        return IdentityIndex(self.application, database, self.batch_size)

    # -- tables ----------------------------------------------------------------------------------

    def create_tables(self) -> None:
        with self.database.write() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS projection_tracking (name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )
            tx.execute(
                """CREATE TABLE IF NOT EXISTS mpi_records (
                    record_id TEXT PRIMARY KEY,
                    person_id TEXT NOT NULL DEFAULT '',
                    version BIGINT NOT NULL,
                    institution TEXT NOT NULL,
                    unit TEXT,
                    curp TEXT NOT NULL,
                    birth_date TEXT NOT NULL,
                    birth_year TEXT NOT NULL,
                    given TEXT NOT NULL,
                    surname1 TEXT NOT NULL,
                    surname2 TEXT NOT NULL,
                    features TEXT NOT NULL,
                    deleted INTEGER NOT NULL DEFAULT 0)"""
            )
            for name, columns in (
                ("mpi_records_person", "person_id"),
                ("mpi_records_curp", "curp"),
                ("mpi_records_birth", "birth_date"),
                ("mpi_records_s1", "birth_year, surname1"),
                ("mpi_records_s2", "birth_year, surname2"),
                ("mpi_records_name", "surname1, given"),
            ):
                tx.execute(f"CREATE INDEX IF NOT EXISTS {name} ON mpi_records ({columns})")
            tx.execute(
                """CREATE TABLE IF NOT EXISTS mpi_links (
                    person_id TEXT NOT NULL,
                    record_id TEXT NOT NULL,
                    method TEXT NOT NULL,
                    score DOUBLE PRECISION,
                    by_user TEXT NOT NULL,
                    PRIMARY KEY (person_id, record_id))"""
            )
            tx.execute("CREATE INDEX IF NOT EXISTS mpi_links_record ON mpi_links (record_id)")
            tx.execute(
                """CREATE TABLE IF NOT EXISTS mpi_review (
                    record_id TEXT NOT NULL,
                    person_id TEXT NOT NULL,
                    score DOUBLE PRECISION NOT NULL,
                    PRIMARY KEY (record_id, person_id))"""
            )
            tx.execute(
                """CREATE TABLE IF NOT EXISTS resource_sources (
                    resource_type TEXT NOT NULL,
                    resource_id TEXT NOT NULL,
                    institution TEXT NOT NULL,
                    unit TEXT,
                    PRIMARY KEY (resource_type, resource_id))"""
            )
            tx.execute(
                "INSERT INTO projection_tracking (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                (self.name,),
            )

    def reset(self) -> None:
        """Empty the views and rewind (a rebuild: the index's decisions are replayed, not taken again)."""
        with self._lock, self.database.write() as tx:
            for table in reversed(_TABLES):
                tx.execute(f"DELETE FROM {table}")
            tx.execute("UPDATE projection_tracking SET position = 0 WHERE name = ?", (self.name,))
            self._position = 0

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        with self.database.read() as tx:
            return {t: sorted(tx.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in _TABLES}

    # -- following the log -----------------------------------------------------------------------

    def _apply_batch(self, until: int | None) -> int:
        # The batch's MPI decisions are saved in one append at its end. Should a data steward's link or
        # unlink have changed one of the same persons meanwhile, that append fails and the views' transaction
        # rolls back with it: the batch is then done again one decision, one append at a time (as before).
        self._batched = True
        try:
            return super()._apply_batch(until)
        except _DecisionsRaced:
            self._batched = False
            return super()._apply_batch(until)
        finally:
            self._batched = True

    _batched = True

    def apply_notifications(self, tx: Tx, notifications: Sequence[Notification]) -> int | None:
        # The batch's own decisions (Person and Membership events) are applied in the same transaction,
        # with whatever other writers appended before them: once the tracking row passes a Patient's
        # version, the links it caused are in the views too (read-your-writes for identity).
        last = notifications[-1].id
        events = [self.application.mapper.to_domain_event(notification) for notification in notifications]
        while events:
            if self._batched:
                self.mpi.begin()
            try:
                self._apply_events(tx, events)
            except BaseException:
                self.mpi.abandon()
                raise
            recordings = self.mpi.flush() if self._batched else self._unbatched_appended()
            if recordings is None:
                raise _DecisionsRaced
            appended = max((recording.notification.id for recording in recordings), default=0)
            if appended <= last:
                break
            decided = {recording.notification.id: recording.domain_event for recording in recordings}
            if decided.keys() == set(range(last + 1, appended + 1)):
                # Nothing was appended between the batch and its decisions: apply the decisions as made,
                # not read back from the log and decrypted again (a create's MPI events, one client).
                events = [decided[notification_id] for notification_id in sorted(decided)]
                last = appended
                continue
            # Other writers appended in between: their events are applied too, in log order.
            notifications = self.application.recorder.select_notifications(
                start=last + 1, limit=appended - last, stop=appended
            )
            events = [self.application.mapper.to_domain_event(notification) for notification in notifications]
            last = notifications[-1].id if notifications else last
        return last

    def _unbatched_appended(self) -> list[Recording[UUID]]:
        # One decision, one append (after a race): what they appended follows in the next batch, as before.
        return []

    def _apply_notifications(self, tx: Tx, notifications: Sequence[Notification]) -> None:
        mapper = self.application.mapper
        self._apply_events(tx, [mapper.to_domain_event(notification) for notification in notifications])

    def _apply_events(self, tx: Tx, events: Sequence[Any]) -> None:
        # Who wrote each resource, gathered over the batch and written at its end: one statement, not one per
        # event (nothing in the batch reads resource_sources back).
        sources: dict[tuple[str, str], tuple[str, str | None] | None] = {}
        # Each Patient's Membership, read for the whole batch in one query (inside the batch's transaction,
        # which every create of a Patient waits for: one read per record made its length grow with the batch).
        self.mpi.preload(
            f"Patient/{event.resource_id}"
            for event in events
            if isinstance(event, ResourceStream.Started | ResourceStream.Revised | ResourceStream.Retracted)
            and event.resource_type == "Patient"
        )
        self._features_cache = {}
        try:
            self._apply_each(tx, events, sources)
        finally:
            self._batch = self._features_cache = None

    def _apply_each(
        self, tx: Tx, events: Sequence[Any], sources: dict[tuple[str, str], tuple[str, str | None] | None]
    ) -> None:
        resource_run = False
        for at, event in enumerate(events):
            if isinstance(event, ResourceStream.Started | ResourceStream.Revised | ResourceStream.Retracted):
                if not resource_run:  # a run of resource events starts: its candidates, read ahead at once
                    self._batch = self._read_candidates(tx, events, at)
                    resource_run = True
                key = (event.resource_type, event.resource_id)
                sources.pop(key, None)  # keep the batch's order of last changes
                if isinstance(event, ResourceStream.Retracted):
                    sources[key] = None
                else:
                    sources[key] = (str(event.context.get("institution", "unknown")), event.context.get("unit"))
            else:
                # A Person, Membership or erasure event changes mpi_records beyond what the read-ahead mirrors:
                # the records after it are read again, as they stand after it.
                self._batch, resource_run = None, False
                if erasure_from_event(0, event) is not None:
                    self._write_sources(tx, sources)
                    sources = {}
            self._apply(tx, event)
        self._write_sources(tx, sources)

    #: The candidates of the batch being applied, read ahead (None: each record asks the database).
    _batch: BatchCandidates | None = None

    def _read_candidates(self, tx: Tx, events: Sequence[Any], start: int) -> BatchCandidates | None:
        """The candidates of every Patient in the run of resource events from ``events[start]``, in one
        statement (PostgreSQL, where each statement whose answer is needed is a round trip inside the batch
        every create waits for). Under concurrent creates a batch is rarely resource events alone: it also
        holds the previous batch's decisions (Person and Membership events), so it is read ahead run by run."""
        if self.database.dialect != "postgres" or not self._batched:
            return None
        records: list[tuple[str, int, Features]] = []
        for event in events[start:]:
            if not isinstance(event, ResourceStream.Started | ResourceStream.Revised | ResourceStream.Retracted):
                break  # Person, Membership or erasure events change mpi_records too: the run ends here
            if event.resource_type == "Patient" and not isinstance(event, ResourceStream.Retracted):
                records.append((event.resource_id, event.originator_version, self._features_of(event)))
        if len(records) < 2:
            return None  # one record: its own query is as many round trips
        return BatchCandidates(tx, records, _CANDIDATES)

    #: Features computed for the batch's read-ahead, kept for its decisions: (record id, version) to them.
    _features_cache: dict[tuple[str, int], Features] | None = None

    def _features_of(self, event: Any) -> Features:
        cache = self._features_cache
        key = (event.resource_id, event.originator_version)
        found = cache.get(key) if cache is not None else None
        if found is None:
            found = patient_features(fhir_json.loads(event.resource))
            if cache is not None:
                cache[key] = found
        return found

    @staticmethod
    def _write_sources(tx: Tx, sources: dict[tuple[str, str], tuple[str, str | None] | None]) -> None:
        tx.delete_keys(
            "resource_sources", ("resource_type", "resource_id"), [k for k, v in sources.items() if v is None]
        )
        tx.upsert(
            "resource_sources",
            ("resource_type", "resource_id", "institution", "unit"),
            ("resource_type", "resource_id"),
            [(*key, *value) for key, value in sources.items() if value is not None],
        )

    def _apply(self, tx: Tx, event: Any) -> None:
        erasure = erasure_from_event(0, event)
        if erasure is not None:  # A blocked or shredded patient leaves the index's views too
            self._erase(tx, erasure.patient, erasure.resources)
            return
        if isinstance(event, ResourceStream.Started | ResourceStream.Revised | ResourceStream.Retracted):
            context = event.context  # resource_sources: written per batch by apply_notifications
            if event.resource_type == "Patient":
                features = None if isinstance(event, ResourceStream.Retracted) else self._features_of(event)
                self._patient_changed(tx, event.resource_id, event.originator_version, features, context)
        elif isinstance(event, Person.Enrolled):
            self._link_row(tx, str(event.originator_id), event.record, "enrolment", None, event.by)
        elif isinstance(event, Person.Linked):
            self._link_row(tx, str(event.originator_id), event.record, event.method, event.score, event.by)
            tx.execute("DELETE FROM mpi_review WHERE record_id = ?", (_patient(event.record),))
        elif isinstance(event, Person.Unlinked):
            tx.execute(
                "DELETE FROM mpi_links WHERE person_id = ? AND record_id = ?",
                (str(event.originator_id), _patient(event.record)),
            )
        elif isinstance(event, Person.Flagged):
            tx.execute(
                "INSERT INTO mpi_review (record_id, person_id, score) VALUES (?, ?, ?) "
                "ON CONFLICT (record_id, person_id) DO UPDATE SET score = excluded.score",
                (_patient(event.record), str(event.originator_id), event.score),
            )
        elif isinstance(event, Person.Dismissed):
            tx.execute(
                "DELETE FROM mpi_review WHERE record_id = ? AND person_id = ?",
                (_patient(event.record), str(event.originator_id)),
            )
        elif isinstance(event, Membership.Assigned):
            tx.execute(
                "UPDATE mpi_records SET person_id = ? WHERE record_id = ?", (event.person, _patient(event.record))
            )

    @staticmethod
    def _erase(tx: Tx, patient: str, resources: list[tuple[str, str]]) -> None:
        """Drop a blocked or shredded Patient record from the index: its features (names, CURP, NSS, birth
        date), its links, the review queue's rows about it, and rows about its person when no other record
        is left to that person (a review candidate pointing at a person made only of this record).

        Replaying the log rebuilds the same state: the record's own events no longer decrypt, and the person
        events that name it (system-keyed) come before the erasure event, which removes them again."""
        persons = [
            str(r[0]) for r in tx.execute("SELECT person_id FROM mpi_links WHERE record_id = ?", (patient,)).fetchall()
        ]
        tx.executemany("DELETE FROM resource_sources WHERE resource_type = ? AND resource_id = ?", resources)
        for table in ("mpi_records", "mpi_links", "mpi_review"):
            tx.execute(f"DELETE FROM {table} WHERE record_id = ?", (patient,))
        tx.executemany(
            "DELETE FROM mpi_review WHERE person_id = ? AND NOT EXISTS "
            "(SELECT 1 FROM mpi_links l WHERE l.person_id = mpi_review.person_id)",
            [(person,) for person in persons],
        )

    @staticmethod
    def _link_row(tx: Tx, person: str, record: str, method: str, score: float | None, by: str) -> None:
        tx.execute(
            "INSERT INTO mpi_links (person_id, record_id, method, score, by_user) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (person_id, record_id) DO UPDATE SET method = excluded.method, score = excluded.score, "
            "by_user = excluded.by_user",
            (person, _patient(record), method, score, by),
        )

    def _patient_changed(
        self, tx: Tx, patient_id: str, version: int, features: Features | None, context: dict[str, Any]
    ) -> None:
        if features is not None:
            f = features
            tx.execute(
                "INSERT INTO mpi_records (record_id, version, institution, unit, curp, birth_date, birth_year, given,"
                " surname1, surname2, features, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
                " ON CONFLICT (record_id) DO UPDATE SET version = excluded.version,"
                " institution = excluded.institution, unit = excluded.unit, curp = excluded.curp,"
                " birth_date = excluded.birth_date, birth_year = excluded.birth_year, given = excluded.given,"
                " surname1 = excluded.surname1, surname2 = excluded.surname2, features = excluded.features,"
                " deleted = 0",
                (
                    patient_id,
                    version,
                    str(context.get("institution", "unknown")),
                    context.get("unit"),
                    f.curp,
                    f.birth_date,
                    f.birth_date[:4],
                    *_blocking(f.given, f.surname1, f.surname2),
                    f.to_json(),
                ),
            )
            read = self._batch.candidates(patient_id, version, features) if self._batch is not None else None
            candidates = read if read is not None else self.candidates(tx, features, exclude=patient_id)
        else:
            tx.execute("UPDATE mpi_records SET deleted = 1 WHERE record_id = ?", (patient_id,))
            candidates = []
        outcome = self.mpi.record_changed(f"Patient/{patient_id}", version, features, candidates)
        tx.execute("UPDATE mpi_records SET person_id = ? WHERE record_id = ?", (outcome.person, patient_id))
        if self._batch is not None:
            self._batch.wrote(patient_id, features, outcome.person)

    # -- queries ---------------------------------------------------------------------------------

    @staticmethod
    def candidates(tx: Tx, features: Features, exclude: str = "", limit: int = _CANDIDATES) -> list[Candidate]:
        """Records sharing a blocking key: CURP, birth date, birth year and a surname, or name and surname."""
        f = features
        year = f.birth_date[:4] or _NONE
        given, surname1, surname2 = _blocking(f.given, f.surname1, f.surname2)
        surnames = [s or _NONE for s in (surname1, surname2)]
        rows = tx.execute(
            "SELECT record_id, person_id, features FROM mpi_records WHERE deleted = 0 AND record_id <> ? AND ("
            "curp = ? OR birth_date = ? OR (birth_year = ? AND (surname1 IN (?, ?) OR surname2 IN (?, ?)))"
            " OR (surname1 = ? AND given = ?)) ORDER BY record_id LIMIT ?",
            (
                exclude,
                f.curp or _NONE,
                f.birth_date or _NONE,
                year,
                *surnames,
                *surnames,
                surname1 or _NONE,
                given or _NONE,
                limit,
            ),
        ).fetchall()
        return [Candidate(f"Patient/{row[0]}", str(row[1]), Features.from_json(row[2])) for row in rows]

    @staticmethod
    def person_of(tx: Tx, patient_id: str) -> str | None:
        row = tx.execute("SELECT person_id FROM mpi_records WHERE record_id = ?", (patient_id,)).fetchone()
        return str(row[0]) if row and row[0] else None

    @staticmethod
    def links(tx: Tx, person_id: str) -> list[LinkRow]:
        rows = tx.execute(
            "SELECT person_id, record_id, method, score, by_user FROM mpi_links WHERE person_id = ? ORDER BY record_id",
            (person_id,),
        ).fetchall()
        return [LinkRow(str(r[0]), str(r[1]), str(r[2]), r[3], str(r[4])) for r in rows]

    @staticmethod
    def linked_records(tx: Tx, patient_id: str) -> list[str]:
        """The Patient ids of the same person (the record itself first); just itself when not indexed.

        One statement (the record's person, joined to that person's links): every read of a Patient asks."""
        rows = tx.execute(
            "SELECT l.record_id FROM mpi_records r JOIN mpi_links l ON l.person_id = r.person_id "
            "WHERE r.record_id = ? AND r.person_id IS NOT NULL AND r.person_id <> '' ORDER BY l.record_id",
            (patient_id,),
        ).fetchall()
        return [patient_id, *(str(row[0]) for row in rows if str(row[0]) != patient_id)]

    @staticmethod
    def record_with_links(tx: Tx, patient_id: str) -> tuple[StoredResource | None, list[str]]:
        """The current Patient ``patient_id`` as stored (None when there is none: :meth:`ResourceViews.read`
        tells a shredded or blocked one) and the ids of the other records of its person, in order.

        One statement, a row per link: every read of a Patient asks both, and most Patients are linked to
        nothing, so the record and its links asked apart were two round trips where one answers."""
        rows = tx.execute(
            "SELECT r.version, r.last_updated, r.body, l.record_id FROM resources r "
            "LEFT JOIN mpi_records m ON m.record_id = r.resource_id AND m.person_id IS NOT NULL "
            "AND m.person_id <> '' LEFT JOIN mpi_links l ON l.person_id = m.person_id "
            "WHERE r.resource_type = 'Patient' AND r.resource_id = ? ORDER BY l.record_id",
            (patient_id,),
        ).fetchall()
        if not rows:
            return ResourceViews.read(tx, "Patient", patient_id), []
        version, last_updated, body = rows[0][0], rows[0][1], rows[0][2]
        stored = StoredResource("Patient", patient_id, int(version), str(last_updated), stored_bytes(body))
        return stored, [str(row[3]) for row in rows if row[3] is not None and str(row[3]) != patient_id]

    @staticmethod
    def record_sources(tx: Tx, patient_ids: Sequence[str]) -> dict[str, Source]:
        if not patient_ids:
            return {}
        marks = ", ".join("?" for _ in patient_ids)
        rows = tx.execute(
            f"SELECT record_id, institution, unit FROM mpi_records WHERE record_id IN ({marks})", list(patient_ids)
        ).fetchall()
        return {str(r[0]): Source(str(r[1]), r[2]) for r in rows}

    @staticmethod
    def records_with_identifier(tx: Tx, system: str, value: str) -> list[str]:
        needle = orjson.dumps([system, value]).decode()
        rows = tx.execute(
            "SELECT record_id FROM mpi_records WHERE deleted = 0 AND features LIKE ? ORDER BY record_id",
            (f"%{needle}%",),
        ).fetchall()
        return [str(r[0]) for r in rows]

    @staticmethod
    def features_of(tx: Tx, patient_ids: Iterable[str]) -> dict[str, Features]:
        ids = list(patient_ids)
        if not ids:
            return {}
        marks = ", ".join("?" for _ in ids)
        rows = tx.execute(f"SELECT record_id, features FROM mpi_records WHERE record_id IN ({marks})", ids).fetchall()
        return {str(r[0]): Features.from_json(r[1]) for r in rows}

    @staticmethod
    def review_queue(tx: Tx, limit: int = 100) -> list[tuple[str, str, float]]:
        rows = tx.execute(
            "SELECT record_id, person_id, score FROM mpi_review ORDER BY score DESC, record_id LIMIT ?", (limit,)
        ).fetchall()
        return [(str(r[0]), str(r[1]), float(r[2])) for r in rows]

    @staticmethod
    def counts(tx: Tx) -> dict[str, int]:
        """The index at a glance: ``persons``, the ``patients`` (Patient records) matched to them, and how
        many possible matches wait for a data steward's ``review``."""
        row = tx.execute("SELECT COUNT(DISTINCT person_id), COUNT(*) FROM mpi_records WHERE deleted = 0").fetchone()
        review = tx.execute("SELECT COUNT(*) FROM mpi_review").fetchone()
        persons, patients = (int(row[0]), int(row[1])) if row else (0, 0)
        return {"persons": persons, "patients": patients, "review": int(review[0]) if review else 0}


def everything_page(
    tx: Tx,
    patients: Sequence[str],
    *,
    types: Sequence[str] | None = None,
    since: str | None = None,
    after: int = 0,
    limit: int = 50,
    viewer: Viewer | None = None,
    clinical: tuple[int, int] | None = None,
) -> list[tuple[int, str, str, bytes, str, str | None]]:
    """Current resources in the compartments of ``patients``, by notification id after ``after``:
    (notification id, type, id, stored bytes, institution, unit); with a ``viewer``, only those it may read
    (another institution's entry in a patient's compartment is not the record holder's to read).

    ``clinical`` (a range of micros, as the search index keeps dates): only resources whose clinical date
    (:data:`CLINICAL_DATE`, else the type's ``date`` parameter) overlaps it; a resource with none (the
    Patient, a Consent without a date) is kept, as nothing places it outside the range."""
    marks = ", ".join("?" for _ in patients)
    conditions = [
        f"EXISTS (SELECT 1 FROM resource_compartments c WHERE c.patient_id IN ({marks}) "
        "AND c.resource_type = r.resource_type AND c.resource_id = r.resource_id)",
        "r.body IS NOT NULL",
        "r.notification_id > ?",
    ]
    params: list[object] = [*patients, after]
    if types:
        conditions.append(f"r.resource_type IN ({', '.join('?' for _ in types)})")
        params.extend(types)
    if since:
        conditions.append("r.last_updated >= ?")
        params.append(since)
    if clinical is not None:
        conditions.append(_clinical_clause())
        params.extend([clinical[1], clinical[0]])
    if viewer is not None:
        clause, clause_params = visible_clause(with_consents(tx, viewer), "r.resource_type", "r.resource_id")
        conditions.append(clause)
        params.extend(clause_params)
    rows = tx.execute(
        "SELECT r.notification_id, r.resource_type, r.resource_id, r.body, s.institution, s.unit "
        "FROM resources r LEFT JOIN resource_sources s "
        "ON s.resource_type = r.resource_type AND s.resource_id = r.resource_id "
        f"WHERE {' AND '.join(conditions)} ORDER BY r.notification_id LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), str(r[4] or "unknown"), r[5]) for r in rows]


#: The search parameter holding a type's clinical date (when care happened), where it is not ``date``:
#: R4 patient-operation-everything's ``start``/``end`` ("care date range") compare with it.
CLINICAL_DATE: dict[str, str] = {
    "Condition": "onset-date",
    "MedicationRequest": "authoredon",
    "MedicationAdministration": "effective-time",
    "MedicationDispense": "whenhandedover",
    "MedicationStatement": "effective",
    "ServiceRequest": "authored",
    "DeviceRequest": "authored-on",
    "Task": "authored-on",
    "Claim": "created",
    "ExplanationOfBenefit": "created",
    "Goal": "start-date",
    "Specimen": "collected",
    "ImagingStudy": "started",
    "Communication": "sent",
    "NutritionOrder": "datetime",
}


def _clinical_clause() -> str:
    """Parameters: the range's high, then its low (micros)."""
    cases = " ".join(f"WHEN '{rtype}' THEN '{param}'" for rtype, param in CLINICAL_DATE.items())
    param = f"(CASE r.resource_type {cases} ELSE 'date' END)"
    dated = (
        "SELECT 1 FROM search_ids i JOIN search_date d ON d.sid = i.sid AND d.resource_type = i.resource_type "
        f"WHERE i.resource_type = r.resource_type AND i.resource_id = r.resource_id AND d.param = {param}"
    )
    return f"(NOT EXISTS ({dated}) OR EXISTS ({dated} AND d.low <= ? AND d.high >= ?))"


def referenced_resources(
    tx: Tx,
    keys: Sequence[tuple[str, str]],
    *,
    types: Sequence[str] | None = None,
    since: str | None = None,
    viewer: Viewer | None = None,
) -> list[tuple[int, str, str, bytes, str, str | None]]:
    """The current resources ``keys`` name (what a page of ``$everything`` references), as
    :func:`everything_page` rows: only those outside every patient compartment (a resource of this patient's
    compartment is listed by :func:`everything_page` itself, another patient's is not this record),
    of ``types``, updated since ``since``, and with a ``viewer``, only those it may read."""
    wanted = sorted({key for key in keys if types is None or key[0] in types})
    found: list[tuple[int, str, str, bytes, str, str | None]] = []
    policy: tuple[str, list[Any]] | None = None
    if viewer is not None:
        policy = visible_clause(with_consents(tx, viewer), "r.resource_type", "r.resource_id")
    for start in range(0, len(wanted), 200):
        chunk = wanted[start : start + 200]
        pairs = " OR ".join("(r.resource_type = ? AND r.resource_id = ?)" for _ in chunk)
        conditions = [
            f"({pairs})",
            "r.body IS NOT NULL",
            "NOT EXISTS (SELECT 1 FROM resource_compartments c WHERE c.resource_type = r.resource_type "
            "AND c.resource_id = r.resource_id)",
        ]
        params: list[Any] = [value for key in chunk for value in key]
        if since:
            conditions.append("r.last_updated >= ?")
            params.append(since)
        if policy is not None:
            conditions.append(policy[0])
            params.extend(policy[1])
        rows = tx.execute(
            "SELECT r.notification_id, r.resource_type, r.resource_id, r.body, s.institution, s.unit "
            "FROM resources r LEFT JOIN resource_sources s "
            "ON s.resource_type = r.resource_type AND s.resource_id = r.resource_id "
            f"WHERE {' AND '.join(conditions)} ORDER BY r.notification_id",
            params,
        ).fetchall()
        found += [(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), str(r[4] or "unknown"), r[5]) for r in rows]
    return found
