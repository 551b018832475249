"""The audit log: one entry per API interaction, in its own append-only log (DESIGN.md "Reads are events too").

The audit log is a second eventsourcing application with its own event table (PostgreSQL: ``audit_events``
in the same schema; SQLite: ``audit.sqlite`` beside ``events.sqlite``), so audit writes never wait on the
clinical log's lock. :class:`AuditWriter` group-commits: callers submit entries and may wait for the
commit (a future), and one thread appends whatever accumulated in one transaction.

:func:`audit_event` renders an entry as a FHIR R4 ``AuditEvent`` in the shape of the IHE Basic Audit Log
Patterns (BALP): ``type`` rest, ``subtype`` the FHIR interaction, the client agent (user, role,
institution, unit, network address), the server as source, the patients and resources as entities, the
query (base64) for searches and the request id as the transaction entity.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import orjson
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent, Transcoder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic
from pydantic_settings import BaseSettings, SettingsConfigDict

from ehr_core.context import random_uuid
from ehr_core.files import private_sqlite
from ehr_core.pgstore import EventRecorder
from ehr_core.settings import Settings
from ehr_core.transcoder import EventTranscoder

__all__ = [
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "AuditSettings",
    "AuditWriter",
    "BreakGlassAccess",
    "audit_event",
    "audit_event_id",
]

log = logging.getLogger(__name__)

CLUES = "urn:oid:2.16.840.1.113883.4.631"
USER_SYSTEM = "urn:ehr-core:user"
INSTITUTION_SYSTEM = "urn:ehr-core:institution"
_NAMESPACE = uuid5(NAMESPACE_URL, "urn:ehr-core:audit-event")

#: FHIR interaction → AuditEvent.action (C, R, U, D, E).
ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "search-type": "E",
    "search-system": "E",
    "capabilities": "E",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "transaction": "E",
    "batch": "E",
    "operation": "E",
}

_BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"
_PROFILES = {
    "C": "IHE.BasicAudit.Create",
    "R": "IHE.BasicAudit.Read",
    "U": "IHE.BasicAudit.Update",
    "D": "IHE.BasicAudit.Delete",
    "E": "IHE.BasicAudit.Query",
}


class AuditSettings(BaseSettings):
    """``EHR_AUDIT_*``. Turning the audit off exists for measuring its cost (``bench.audit``), not for use."""

    model_config = SettingsConfigDict(env_prefix="EHR_AUDIT_", extra="ignore")

    enabled: bool = True
    #: While the audit log cannot be written, one request in this many seconds goes through as a probe.
    probe_seconds: float = 5.0


@dataclass(frozen=True)
class AuditEntry:
    """What one interaction did, who asked, from where, why, and how it ended."""

    recorded: str
    interaction: str
    method: str
    path: str
    status: int
    institution: str
    user: str
    purpose: str
    request_id: str
    query: str = ""
    role: str | None = None
    unit: str | None = None
    address: str | None = None
    operation: str | None = None
    #: ``Type/id/_history/version`` (or ``Type/id`` when no version is known) of the resources concerned.
    entities: list[str] = field(default_factory=list)
    #: Patient ids whose records were concerned.
    patients: list[str] = field(default_factory=list)
    #: How the access policy shaped the answer: ``filtered`` (other institutions' records left out),
    #: ``break-the-glass``, ``consent`` or ``referral`` (another institution's record read under the patient's
    #: Consent or an accepted referral); None when it did not apply.
    access: str | None = None
    #: The reason given for breaking the glass (purpose ``BTG``), or the grants a ``consent``/``referral`` read
    #: was made under (``Consent/id``, ``Task/id``): kept in the signed audit log, not only in the review list,
    #: so that what was claimed cannot be changed or removed unnoticed.
    reason: str | None = None

    @property
    def action(self) -> str:
        return ACTIONS.get(self.interaction, "E")

    @property
    def outcome(self) -> str:
        """AuditEvent.outcome: 0 success, 4 minor failure (refused, 4xx), 8 serious failure (5xx)."""
        if self.status < 400:
            return "0"
        return "4" if self.status < 500 else "8"

    def as_dict(self) -> dict[str, Any]:
        # By hand: dataclasses.asdict deep-copies, and this runs for every API interaction.
        return {k: v for k in _FIELDS if (v := getattr(self, k)) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEntry:
        return cls(**data)


_FIELDS = tuple(AuditEntry.__dataclass_fields__)


class AuditRecord(Aggregate):
    """One audit entry (an aggregate of one event: nothing ever changes it)."""

    class Recorded(Aggregate.Created):
        entry: dict[str, Any]

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry

    @classmethod
    def stored(cls, entry: AuditEntry) -> StoredEvent:
        """The stored form of :meth:`recorded`'s event, built directly: the bytes the library's mapper makes
        of it (``timestamp``, ``originator_topic``, ``entry``, by orjson), without the event object, the
        copy of its attributes and the topic lookup per entry. Its id comes from :func:`random_uuid`."""
        timestamp = cls.Recorded.create_timestamp()
        state = {"timestamp": timestamp, "originator_topic": _RECORD_TOPIC, "entry": entry.as_dict()}
        return StoredEvent(random_uuid(), cls.INITIAL_VERSION, _RECORDED_TOPIC, orjson.dumps(state))

    @classmethod
    def recorded(cls, entry: AuditEntry) -> AuditRecord.Recorded:
        """The one event that records ``entry`` (the fields ``Aggregate._create`` gives a created event, so the
        same stored bytes), without building the aggregate around it: the audit writer appends one per API
        interaction and never reads an aggregate back."""
        event: AuditRecord.Recorded = cast(Any, cls.Recorded)(  # eventsourcing makes it a dataclass at run time
            originator_id=uuid4(),
            originator_version=cls.INITIAL_VERSION,
            timestamp=cls.Recorded.create_timestamp(),
            originator_topic=_RECORD_TOPIC,
            entry=entry.as_dict(),
        )
        return event


_RECORD_TOPIC = get_topic(AuditRecord)
_RECORDED_TOPIC = get_topic(AuditRecord.Recorded)


class BreakGlassAccess(Aggregate):
    """One break-the-glass access (DESIGN.md "Access"): who read another institution's records without its
    consent, from which unit and in which role, why, and what (``Patient/id``, ``Patient/id/$everything``,
    the kind of search). An aggregate of one event, like :class:`AuditRecord`, in the same append-only
    log, so the audit ledger signs it and the review list (:class:`projections.access.BreakGlassReview`) is
    a projection of it that ``ehr rebuild`` reproduces. When it happened is the event's timestamp."""

    class Granted(Aggregate.Created):
        institution: str
        unit: str | None
        user: str
        role: str | None
        reason: str
        target: str

    def __init__(
        self, institution: str, unit: str | None, user: str, role: str | None, reason: str, target: str
    ) -> None:
        self.institution = institution
        self.unit = unit
        self.user = user
        self.role = role
        self.reason = reason
        self.target = target

    @classmethod
    def grant(
        cls, institution: str, unit: str | None, user: str, role: str | None, reason: str, target: str
    ) -> BreakGlassAccess:
        return cls._create(
            cls.Granted,
            id=uuid4(),
            institution=institution,
            unit=unit,
            user=user,
            role=role,
            reason=reason,
            target=target,
        )


class AuditLog(Application[UUID]):
    name = "audit"

    def __init__(self, settings: Settings) -> None:
        env = settings.event_store_env()
        if not settings.uses_postgres:
            env["SQLITE_DBNAME"] = str(private_sqlite(settings.data_dir / "audit.sqlite"))
        # No check of each pooled connection as the writer takes it (POSTGRES_PRE_PING): that is one more round
        # trip per group commit, on every audited request's wait, to guard against a rare fault that
        # :meth:`repair` cures after it happened.
        super().__init__(env=env)

    def repair(self) -> None:
        """After a failed append: drop the pool's dead connections before the retry. Once the database killed
        the pool's sessions (a restart, ``pg_terminate_backend``), every pooled connection is dead; without
        this each retry would meet the next one, and the audit log would be declared unwritable (every
        request refused until the next probe) for a fault a reconnect cures."""
        datastore = getattr(self.recorder, "datastore", None)
        pool = getattr(datastore, "pool", None)
        if pool is not None and hasattr(pool, "check"):
            pool.check()  # psycopg_pool: tests each idle connection, replaces the broken ones

    def construct_transcoder(self) -> Transcoder:
        return EventTranscoder()

    def append(self, entries: Sequence[AuditEntry]) -> int:
        """Append entries in one transaction; return the last notification id.

        Straight to the recorder: ``save`` would build an aggregate per entry and test each object against
        the library's runtime protocols, which cost more CPU than storing the entry (measured: about a third
        of a batch's append), and there are no snapshots or subscribers for it to serve. The stored events
        are built directly (:meth:`AuditRecord.stored`) unless the log is compressed or enciphered.
        PostgreSQL appends them in one statement (``EventRecorder.append_in_one_statement``), SQLite in one
        multi-row INSERT per 200 entries; each read waits for its entry's commit."""
        mapper = self.mapper
        if mapper.cipher is not None or mapper.compressor is not None:
            recordings = self.events.put([AuditRecord.recorded(e) for e in entries])
            return max(r.notification.id for r in recordings)
        stored = [AuditRecord.stored(e) for e in entries]
        recorder = self.recorder
        if isinstance(recorder, EventRecorder):
            return max(recorder.append_in_one_statement(stored))
        if isinstance(recorder, SQLiteApplicationRecorder):
            return _sqlite_append(recorder, stored)
        ids = recorder.insert_events(stored)
        assert ids, "an application recorder returns the notification ids"
        return max(ids)

    def record_break_glass(self, access: BreakGlassAccess) -> int:
        """Append one break-the-glass access at once (not through the group-commit writer: the access is
        granted only once it is recorded); return its notification id."""
        recordings = self.save(access)
        return max(r.notification.id for r in recordings)


#: Rows per multi-row INSERT on SQLite: 4 parameters each, under the 999 of SQLite builds before 3.32.
_SQLITE_ROWS = 200


def _hex(originator_id: UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


def _sqlite_append(recorder: SQLiteApplicationRecorder, stored: Sequence[StoredEvent]) -> int:
    """One transaction, one INSERT per :data:`_SQLITE_ROWS` entries (the library's recorder sends one per
    event, to read each one's rowid); the last rowid is the last entry's notification id."""
    table = recorder.events_table_name
    with recorder.datastore.transaction(commit=True) as cursor:
        for start in range(0, len(stored), _SQLITE_ROWS):
            chunk = stored[start : start + _SQLITE_ROWS]
            values = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
            params = [p for s in chunk for p in (_hex(s.originator_id), s.originator_version, s.topic, s.state)]
            cursor.execute(f"INSERT INTO {table} VALUES {values}", params)
        last = cursor.lastrowid
    assert isinstance(last, int)
    return last


#: Pauses before each retry of a failed audit append (None: the last attempt), about 1.3 s in all.
_RETRY_PAUSES: tuple[float | None, ...] = (0.05, 0.25, 1.0, None)


#: What a submitter waits on: a future of the caller's thread, or of its event loop (:meth:`AuditWriter.committed`).
_Waiter = Future[int] | asyncio.Future[int]


class AuditWriter(threading.Thread):
    """Group commit: one thread appends every entry submitted since its last commit, in one transaction.

    The event loop's waiters (:meth:`committed`) are settled with one ``call_soon_threadsafe`` per loop
    per commit: a concurrent future wrapped for asyncio (``asyncio.wrap_future``) costs one per entry, each
    a write to the loop's self-pipe, a system call that lets go of the GIL and then waits to take it back,
    so a commit of 30 entries woke the loop 30 times and waited for the GIL as often before the last
    request could go on."""

    def __init__(self, log_: AuditLog, batch: int = 500, on_commit: Any = None, probe_seconds: float = 5.0) -> None:
        super().__init__(name="ehr-audit-writer", daemon=True)
        self.log = log_
        self.batch = batch
        self.on_commit = on_commit
        self.probe_seconds = probe_seconds
        # Unbounded, but its submitters wait for their commit once it holds more than a few batches. A deque
        # (appends and pops need no lock) and an event the writer waits on when it has nothing to do: a
        # ``queue.Queue`` takes its lock and notifies its condition on every put, on the event loop, while
        # this sets the event once per commit (the first entry submitted after the writer took its batch).
        self._queue: deque[tuple[AuditEntry, _Waiter] | None] = deque()
        self._wake = threading.Event()
        #: Entries submitted, and entries whose commit is over (committed or failed): :meth:`flush` waits for
        #: the second to reach the first. ``_submitting`` keeps the count in the queue's order.
        self._submitted = 0
        self._settled = 0
        self._submitting = threading.Lock()
        self._progress = threading.Condition()
        #: The entries (first, last, by submission count) of the last commit that failed, and its error.
        self._failure: tuple[int, int, BaseException] | None = None
        #: When the last commit failed for good (None: the last commit succeeded). See :meth:`unavailable`.
        self.failed_at: float | None = None
        #: Wall-clock times (``time.time()``) for operators (``GET /health``, ``/metrics``): when the log became
        #: unwritable (None while writable), when the last probe request was let through, the last commit.
        self.unwritable_since: float | None = None
        self.probed_at: float | None = None
        self.committed_at: float | None = None

    def _put(self, entry: AuditEntry, waiter: _Waiter) -> None:
        with self._submitting:
            self._submitted += 1
            self._queue.append((entry, waiter))
        if not self._wake.is_set():
            self._wake.set()

    def submit(self, entry: AuditEntry) -> Future[int]:
        """Queue ``entry``; the future resolves to its notification id once committed."""
        future: Future[int] = Future()
        self._put(entry, future)
        return future

    def committed(self, entry: AuditEntry) -> asyncio.Future[int]:
        """Queue ``entry`` from the running event loop; await the result for its notification id, once
        committed (settled with its commit's other entries of the same loop in one loop callback)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._put(entry, future)
        return future

    @property
    def writable(self) -> bool:
        """Whether the last commit succeeded (or none failed yet)."""
        return self.failed_at is None

    def unavailable(self, probe_seconds: float | None = None) -> bool:
        """True while the audit log cannot be written: the last commit failed, less than ``probe_seconds``
        ago (after that, one request goes through as a probe: if its entry commits, access reopens)."""
        failed = self.failed_at
        if failed is None:
            return False
        if time.monotonic() - failed >= (self.probe_seconds if probe_seconds is None else probe_seconds):
            self.failed_at = time.monotonic()  # let this one through; the next wait another interval
            self.probed_at = time.time()
            return False
        return True

    def backlog(self) -> int:
        """Entries submitted and not yet taken into a commit."""
        return len(self._queue)

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every entry submitted so far is committed (commits happen in submission order); raise
        the error of the commit that took the last of them, if it failed."""
        target = self._submitted
        with self._progress:
            if not self._progress.wait_for(lambda: self._settled >= target, timeout):
                raise TimeoutError(f"audit entries not committed within {timeout} s")
            failure = self._failure
        if failure is not None and failure[0] <= target <= failure[1]:
            raise failure[2]

    def record(self, entry: AuditEntry) -> int:
        """Append ``entry`` and wait for the commit."""
        return self.submit(entry).result()

    def stop(self) -> None:
        self._queue.append(None)
        self._wake.set()
        self.join(timeout=30)

    def run(self) -> None:
        stopping = False
        while not stopping:
            # Cleared before looking: an entry appended after the look finds the event clear and sets it.
            self._wake.clear()
            if not self._queue:
                self._wake.wait()
            items: list[tuple[AuditEntry, _Waiter]] = []
            while len(items) < self.batch and self._queue:
                item = self._queue.popleft()
                if item is None:
                    stopping = True
                    break
                items.append(item)
            if items:
                self._commit(items)

    def _commit(self, items: list[tuple[AuditEntry, _Waiter]]) -> None:
        last: int | None = None
        error: BaseException | None = None
        for attempt, pause in enumerate(_RETRY_PAUSES):
            try:
                last = self.log.append([entry for entry, _ in items])
                break
            except Exception as failure:  # keep the entries; a failing audit write must not lose them silently
                log.warning("audit append failed (attempt %d)", attempt + 1, exc_info=True)
                if pause is not None:
                    try:
                        self.log.repair()
                    except Exception:  # the database still down: the retries below say so
                        log.warning("audit log's connections not checked", exc_info=True)
                    # A connection killed under the pool is replaced on the next checkout; retrying at once
                    # would meet the pool's other dead connections and declare the log unwritable (every
                    # request 503 until the next probe) for what was a passing fault.
                    time.sleep(pause)
                else:
                    self.failed_at = time.monotonic()
                    if self.unwritable_since is None:
                        self.unwritable_since = time.time()
                    error = failure
        if error is None:
            self.failed_at = self.unwritable_since = None
            self.committed_at = time.time()
            if self.on_commit is not None:
                try:  # e.g. bring the AuditEvent views up to date before the callers go on
                    self.on_commit(last)
                except Exception:
                    log.warning("audit on-commit hook failed", exc_info=True)
        loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[int]]] = {}
        for _, waiter in items:
            if isinstance(waiter, asyncio.Future):
                loops.setdefault(waiter.get_loop(), []).append(waiter)
            elif error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(cast(int, last))
        for loop, futures in loops.items():
            with suppress(RuntimeError):  # the loop is closed: nobody awaits these any more
                loop.call_soon_threadsafe(_settle, futures, last, error)
        with self._progress:
            first = self._settled + 1
            self._settled += len(items)
            if error is not None:
                self._failure = (first, self._settled, error)
            self._progress.notify_all()


def _settle(futures: list[asyncio.Future[int]], last: int | None, error: BaseException | None) -> None:
    """On the futures' loop: resolve every waiter of one commit (a cancelled request's is left alone)."""
    for future in futures:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(int, last))


def audit_event_id(notification_id: int) -> str:
    return str(uuid5(_NAMESPACE, str(notification_id)))


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _purpose(entry: AuditEntry) -> dict[str, Any]:
    """AuditEvent.purposeOfEvent: the HL7 v3 ActReason, with the stated reason as its text when the glass was
    broken (BALP: the justification of an emergency access travels with the audit record)."""
    purpose: dict[str, Any] = {"coding": [_coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", entry.purpose)]}
    if entry.reason:
        purpose["text"] = entry.reason
    return purpose


def audit_event(entry: AuditEntry, resource_id: str) -> dict[str, Any]:
    """The entry as a FHIR R4 AuditEvent (IHE BALP shape)."""
    action = entry.action
    subtype = [_coding("http://hl7.org/fhir/restful-interaction", entry.interaction)]
    if entry.operation:
        subtype.append(_coding("urn:ehr-core:operation", entry.operation))
    client: dict[str, Any] = {
        "type": {
            "coding": [
                _coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP", "information recipient")
            ]
        },
        "who": {"identifier": {"system": f"{USER_SYSTEM}:{entry.institution}", "value": entry.user}},
        "altId": entry.user,
        "name": entry.user,
        "requestor": True,
    }
    if entry.role:
        client["role"] = [{"coding": [_coding("urn:ehr-core:role", entry.role)], "text": entry.role}]
    if entry.unit:
        client["location"] = {"identifier": {"system": CLUES, "value": entry.unit}}
    if entry.address:
        client["network"] = {"address": entry.address, "type": "2"}
    client["purposeOfUse"] = [
        {"coding": [_coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", entry.purpose)]}
    ]
    organization = {
        "type": {
            "coding": [_coding("http://terminology.hl7.org/CodeSystem/v3-RoleClass", "PROV", "healthcare provider")]
        },
        "who": {"identifier": {"system": INSTITUTION_SYSTEM, "value": entry.institution}, "display": entry.institution},
        "requestor": False,
    }
    server = {
        "type": {"coding": [_coding("http://dicom.nema.org/resources/ontology/DCM", "110153", "Source Role ID")]},
        "who": {"display": "ehr-core FHIR server"},
        "requestor": False,
        "network": {"address": entry.path, "type": "5"},
    }
    entities: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"value": entry.request_id}},
            "type": _coding("https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "XrequestId"),
        }
    ]
    for patient in entry.patients:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": _coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"),
                "role": _coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient"),
            }
        )
    for reference in entry.entities:
        entities.append(
            {
                "what": {"reference": reference},
                "type": _coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
                "role": _coding("http://terminology.hl7.org/CodeSystem/object-role", "4", "Domain Resource"),
            }
        )
    if entry.interaction.startswith("search") or entry.query:
        entities.append(
            {
                "type": _coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
                "role": _coding("http://terminology.hl7.org/CodeSystem/object-role", "24", "Query"),
                "query": base64.b64encode(f"{entry.method} {entry.path}?{entry.query}".encode()).decode(),
            }
        )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": resource_id,
        "meta": {"profile": [_BALP + _PROFILES[action]]},
        "type": _coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "Restful Operation"),
        "subtype": subtype,
        "action": action,
        "recorded": entry.recorded,
        "outcome": entry.outcome,
        "purposeOfEvent": [_purpose(entry)],
        "agent": [client, organization, server],
        "source": {
            "site": entry.unit or entry.institution,
            "observer": {"display": "ehr-core FHIR server"},
            "type": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")],
        },
        "entity": entities,
    }
    if entry.outcome != "0":
        event["outcomeDesc"] = f"HTTP {entry.status}"
    elif entry.access == "filtered":
        event["outcomeDesc"] = "answered without the records the access policy withholds from this institution"
    elif entry.access == "break-the-glass":
        event["outcomeDesc"] = "answered with records disclosed by break-the-glass"
    elif entry.access == "referral":
        event["outcomeDesc"] = f"answered under the referral grant of {entry.reason or 'an accepted referral'}"
    elif entry.access == "consent":
        event["outcomeDesc"] = f"answered under the patient's consent ({entry.reason or 'an active Consent'})"
    return event
