"""The application service: validate, version, hash and append (DESIGN.md "Write path").

Methods are thin, one per FHIR write interaction. Each returns a :class:`Written` that carries the
notification id of what it appended, so the caller can wait for the projections to reach it
(read-your-writes) before answering.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, InterfaceError, Mapper, OperationalError, Transcoder

from ehr_core.compartment import patient_compartment, security_context_target
from ehr_core.context import WriteContext
from ehr_core.encryption import EncryptingMapper, Unreadable, compartment_of
from ehr_core.errors import (
    Conflict,
    Deleted,
    Forbidden,
    InvalidResource,
    Issue,
    NotFound,
    PreconditionFailed,
    RecordedElsewhere,
    RecordError,
    StoreUnavailable,
    TooLarge,
)
from ehr_core.group_commit import GroupCommit
from ehr_core.identity.rules import check_identifiers
from ehr_core.keys import Erased, KeyStore
from ehr_core.referrals import check_transition, receiving_institution
from ehr_core.resources import json as fhir_json
from ehr_core.resources.validation import is_valid_id, validate
from ehr_core.settings import Settings
from ehr_core.streams import ResourceStream, stream_id
from ehr_core.transcoder import EventTranscoder

__all__ = ["RecordApplication", "Written", "format_instant"]

#: What a patient-facing app may record (patient scopes only): what the patient decides, their Consent.
PATIENT_WRITABLE = frozenset({"Consent"})

#: The institution of a writer that names none (see ``RecordApplication.authorize``).
UNKNOWN_INSTITUTION = "unknown"

# Concurrent writers without If-Match: retry the read-modify-append this many times before a 409.
_RETRIES = 5
#: Appends of one write after a lost connection, while the store shows none of it stored.
_APPEND_ATTEMPTS = 5


def format_instant(moment: datetime) -> str:
    """A FHIR ``instant`` with microseconds and an explicit offset (what ``meta.lastUpdated`` holds)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def content_hash(resource: dict[str, Any]) -> str:
    """Hash of the content a client controls: everything but the server's ``meta`` fields."""
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        client_meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        resource = {k: v for k, v in resource.items() if k != "meta"}
        if client_meta:
            resource["meta"] = client_meta
    return hashlib.sha256(fhir_json.dumps(resource)).hexdigest()


def with_server_meta(resource: dict[str, Any], version: int, last_updated: str) -> dict[str, Any]:
    """The stored form: the client's resource plus ``meta.versionId`` and ``meta.lastUpdated``.

    Keys keep the client's order; a missing ``meta`` goes right after ``id`` as in the spec's examples.
    """
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = last_updated
    if "meta" in resource:
        return {k: (meta if k == "meta" else v) for k, v in resource.items()}
    stored: dict[str, Any] = {}
    for key, value in resource.items():
        stored[key] = value
        if key == "id":
            stored["meta"] = meta
    stored.setdefault("meta", meta)
    return stored


@dataclass(frozen=True)
class Written:
    """The outcome of one write interaction."""

    resource_type: str
    resource_id: str
    version: int
    last_updated: str
    #: The stored resource (None after a delete).
    body: bytes | None
    #: True when this write started the resource or brought it back after a delete (201).
    created: bool
    #: Notification id of the appended event; None when nothing was appended.
    notification_id: int | None = None
    #: The institution store it was appended to ("" outside a federation).
    store: str = ""


@dataclass
class Pending:
    """A write checked and prepared, not yet appended: the unit a transaction commits together."""

    written: Written
    #: The stream with its new event pending; None when nothing needs appending (identical content).
    stream: ResourceStream | None


class RecordApplication(Application[UUID]):
    """Appends FHIR resource versions to the event log, one stream per resource instance."""

    name = "ehr"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__(env=settings.event_store_env())
        self._group = GroupCommit(self._append)
        #: In a federation, which other store holds a stream absent here (None: none does). A
        #: write must never start a second stream of a resource another institution's store already holds.
        self.elsewhere: Callable[[str, str], str | None] | None = None
        #: The institution store this application appends to ("" outside a federation).
        self.store = ""
        #: Wraps every use of the store (a federation's fails fast while its store is down).
        self.guard: Callable[[], AbstractContextManager[None]] = nullcontext
        #: The issues of a resource against the profiles it claims in ``meta.profile`` (R4
        #: profiling.html#profile-use), and of a StructureDefinition's differential against its base
        #: (profiling.html#snapshot), looked up in the read side; set by the composition root.
        self.profile_check: Callable[[dict[str, Any]], list[Issue]] | None = None

    def construct_transcoder(self) -> Transcoder:
        return EventTranscoder()

    def construct_mapper(self) -> Mapper[UUID]:
        """Every event sealed under its patient compartment's data key (ehr_core/encryption.py)."""
        self.keys = KeyStore(self.settings)
        return EncryptingMapper(self.construct_transcoder(), self.keys)

    def close(self) -> None:
        super().close()
        keys: KeyStore | None = getattr(self, "keys", None)
        if keys is not None:
            keys.close()

    # -- loading ---------------------------------------------------------------------------------

    def stream(self, resource_type: str, resource_id: str) -> ResourceStream | None:
        """The stream of ``Type/id`` as of its latest event, or None if it was never written."""
        with self.guard():
            latest = list(self.events.get(stream_id(resource_type, resource_id), desc=True, limit=1))
        if not latest and self.elsewhere is not None:
            home = self.elsewhere(resource_type, resource_id)
            if home is not None:
                raise RecordedElsewhere(
                    f"{resource_type}/{resource_id} is recorded in {home}'s store; a transaction commits in one "
                    f"store only: send this change on its own, or to a server of {home}"
                )
        if latest and isinstance(latest[0], Unreadable):  # its patient's key was shredded
            raise Erased(f"{resource_type}/{resource_id} was erased (crypto-shredded)")
        if not latest:
            return None
        stream = ResourceStream.from_latest(latest[0])
        if stream.owner is None:
            # Written before events named their stream's owner: the first version's institution is.
            with self.guard():
                first = list(self.events.get(stream.id, lte=1, limit=1))
            context = getattr(first[0], "context", None) if first else None
            stream.owner = str((context or {}).get("institution", "unknown"))
        return stream

    @staticmethod
    def authorize_patient(resource: dict[str, Any], compartment: list[str], context: WriteContext) -> None:
        """A patient-facing app writes for its patient only what the patient decides (DESIGN.md "Access": a
        Consent by the patient through a patient-facing app grants like one by the record's custodian)."""
        if context.patient is None:
            return
        if resource["resourceType"] not in PATIENT_WRITABLE or context.patient not in compartment:
            raise Forbidden(
                f"a patient-facing app records only Patient/{context.patient}'s own "
                f"{' or '.join(sorted(PATIENT_WRITABLE))}, not this {resource['resourceType']}"
            )

    @staticmethod
    def authorize(stream: ResourceStream | None, context: WriteContext) -> None:
        """The write policy (DESIGN.md "Access"): a resource is changed only by the institution that recorded
        it. No write grant to another institution exists, so its update, patch or delete is refused before
        anything is read from the resource: a refused writer learns neither its content nor whether a patch
        would apply. A new resource (create, or create-on-update of an unknown id) belongs to its writer.

        A writer that names no institution (``unknown``: development mode without authentication and without
        ``X-EHR-Institution``, or an operator's ``ehr import``) is not held to it, as its reads are not
        filtered either; with authentication on every writer's institution comes from its token."""
        if stream is None or stream.owner == context.institution or context.institution == UNKNOWN_INSTITUTION:
            return
        raise Forbidden(
            f"{stream.resource_type}/{stream.resource_id} was recorded by {stream.owner}; only {stream.owner} may "
            f"change it (record your own resource, e.g. a new {stream.resource_type} that refers to it)"
        )

    def authorize_change(self, stream: ResourceStream | None, context: WriteContext) -> None:
        """The write policy for an update or patch: :meth:`authorize`, with the one write grant there is — the
        institution that owns a referral Task (``Task.owner``, the receiving institution) moves it (accept,
        reject, start, complete); which changes each side may make is checked once the new content is known
        (:func:`ehr_core.referrals.check_transition`, from :meth:`_prepare`)."""
        if (
            stream is not None
            and stream.resource_type == "Task"
            and stream.resource is not None
            and not stream.deleted
            and context.patient is None
            and receiving_institution(fhir_json.loads(stream.resource), self._organization) == context.institution
        ):
            return
        self.authorize(stream, context)

    def _organization(self, organization_id: str) -> dict[str, Any] | None:
        """The stored Organization ``organization_id`` (None: unknown, retracted, or held elsewhere)."""
        try:
            stream = self.stream("Organization", organization_id)
        except RecordError:
            return None
        if stream is None or stream.deleted or stream.resource is None:
            return None
        found: dict[str, Any] = fhir_json.loads(stream.resource)
        return found

    def security_context_compartment(self, resource: dict[str, Any]) -> list[str]:
        """A Binary whose ``securityContext`` is another resource (a DocumentReference, say) is accessed as
        that resource is (R4 binary.html "Security"): it takes that resource's patient compartment as of
        this write, as every event keeps the compartment it was written with (ehr_core/compartment.py). A
        target this store does not hold (unknown, in another institution's store, or erased) gives none."""
        target = security_context_target(resource)
        if target is None:
            return []
        try:
            stream = self.stream(*target)
        except (RecordedElsewhere, Erased):
            return []
        return list(stream.compartment) if stream is not None and not stream.deleted else []

    def holds(self, resource_type: str, resource_id: str) -> bool:
        """Whether this store has ever recorded ``Type/id`` (one index lookup, nothing decrypted)."""
        with self.guard():
            found = self.recorder.select_events(stream_id(resource_type, resource_id), desc=True, limit=1)
        return bool(found)

    def require_current(self, resource_type: str, resource_id: str) -> ResourceStream:
        """The live stream, or NotFound / Deleted (for interactions that need an existing resource)."""
        stream = self.stream(resource_type, resource_id)
        if stream is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if stream.deleted:
            raise Deleted(f"{resource_type}/{resource_id} was deleted")
        return stream

    # -- interactions: each prepares, then commits alone (a transaction commits many at once) -----

    def create(self, resource: Any, context: WriteContext, resource_type: str | None = None) -> Written:
        """FHIR create: the server assigns the id (any id in the body is replaced, R4 §3.1.0.7)."""
        return self.commit([self.prepare_create(resource, context, resource_type)])[0]

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: Any,
        context: WriteContext,
        if_match: int | None = None,
    ) -> Written:
        """FHIR update, including create-on-update with a client-chosen id (R4 §3.1.0.4)."""
        return self._with_retries(
            lambda: self.prepare_update(resource_type, resource_id, resource, context, if_match),
            if_match,
            f"{resource_type}/{resource_id}",
        )

    def patch(
        self,
        resource_type: str,
        resource_id: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        context: WriteContext,
        if_match: int | None = None,
    ) -> Written:
        """FHIR patch (R4 §3.1.0.5): ``change`` maps the current resource to the patched one."""
        return self._with_retries(
            lambda: self.prepare_patch(resource_type, resource_id, change, context, if_match),
            if_match,
            f"{resource_type}/{resource_id}",
        )

    def delete(
        self, resource_type: str, resource_id: str, context: WriteContext, if_match: int | None = None
    ) -> Written | None:
        """FHIR delete: append a retraction. Deleting what is absent or already deleted appends nothing."""
        written = self._with_retries(
            lambda: self.prepare_delete(resource_type, resource_id, context, if_match),
            if_match,
            f"{resource_type}/{resource_id}",
        )
        return written if written.notification_id is not None else None

    def _with_retries(self, prepare: Callable[[], Pending], if_match: int | None, what: str) -> Written:
        # Without If-Match the client asked for "the latest, whatever it is": re-read and retry a lost
        # race. With If-Match the client named a version, so losing the race is its answer (409).
        for attempt in range(_RETRIES):
            try:
                return self.commit([prepare()])[0]
            except Conflict:
                if if_match is not None or attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # -- preparing -------------------------------------------------------------------------------

    def prepare_create(
        self,
        resource: Any,
        context: WriteContext,
        resource_type: str | None = None,
        resource_id: str | None = None,
        now: datetime | None = None,
    ) -> Pending:
        """A new resource with a server id (``resource_id`` lets a transaction pre-assign it)."""
        validate(resource, resource_type)
        body = {k: v for k, v in resource.items() if k not in ("resourceType", "id")}
        ordered = {"resourceType": resource["resourceType"], "id": resource_id or str(uuid4()), **body}
        return self._prepare(None, ordered, context, "create", now)

    def prepare_update(
        self,
        resource_type: str,
        resource_id: str,
        resource: Any,
        context: WriteContext,
        if_match: int | None = None,
        now: datetime | None = None,
    ) -> Pending:
        if not is_valid_id(resource_id):
            raise InvalidResource([Issue("value", f"invalid id {resource_id!r}")])
        validate(resource, resource_type)
        body_id = resource.get("id")
        if body_id is None:
            raise InvalidResource([Issue("required", "the resource must have an id", f"{resource_type}.id")])
        if body_id != resource_id:
            message = f"id in the body ({body_id}) does not match the id in the URL ({resource_id})"
            raise InvalidResource([Issue("invalid", message, f"{resource_type}.id")])
        stream = self.stream(resource_type, resource_id)
        self.authorize_change(stream, context)
        _check_if_match(stream, if_match, resource_type, resource_id)
        return self._prepare(stream, resource, context, "update", now)

    def prepare_patch(
        self,
        resource_type: str,
        resource_id: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        context: WriteContext,
        if_match: int | None = None,
        now: datetime | None = None,
    ) -> Pending:
        stream = self.require_current(resource_type, resource_id)
        self.authorize_change(stream, context)  # before the patch runs: a JSON Patch ``test`` would be an oracle
        _check_if_match(stream, if_match, resource_type, resource_id)
        assert stream.resource is not None
        patched = change(fhir_json.loads(stream.resource))
        # The result is validated like any update before it is stored (R4 §3.1.0.5).
        validate(patched, resource_type)
        if patched.get("id") != resource_id:
            raise InvalidResource([Issue("invalid", "a patch may not change the resource id", f"{resource_type}.id")])
        return self._prepare(stream, patched, context, "patch", now)

    def prepare_delete(
        self,
        resource_type: str,
        resource_id: str,
        context: WriteContext,
        if_match: int | None = None,
        now: datetime | None = None,
    ) -> Pending:
        if context.patient is not None:
            raise Forbidden("a patient-facing app does not delete; a Consent is withdrawn by updating its status")
        stream = self.stream(resource_type, resource_id)
        self.authorize(stream, context)
        _check_if_match(stream, if_match, resource_type, resource_id)
        if stream is None or stream.deleted:
            version = stream.version if stream is not None else 0
            return Pending(Written(resource_type, resource_id, version, "", None, False), None)
        now = now or datetime.now(UTC)
        stream.retract(context.as_dict() | {"interaction": "delete", "owner": stream.owner}, now)
        written = Written(resource_type, resource_id, stream.version, format_instant(now), None, False)
        return Pending(written, stream)

    def _prepare(
        self,
        stream: ResourceStream | None,
        resource: dict[str, Any],
        context: WriteContext,
        interaction: str,
        now: datetime | None,
    ) -> Pending:
        resource_type, resource_id = resource["resourceType"], resource["id"]
        meta = resource.get("meta")
        claims = isinstance(meta, dict) and bool(meta.get("profile"))
        if self.profile_check is not None and (claims or resource_type == "StructureDefinition"):
            # A claimed profile's constraints hold like the core's: breaking one is an invalid resource;
            # a profile's differential must constrain its base (its snapshot can be generated).
            errors = [issue for issue in self.profile_check(resource) if issue.severity == "error"]
            if errors:
                raise InvalidResource(errors)
        check_identifiers(resource)  # domain rules (CURP, NSS, RFC, CLUES): 422 names the identifier
        if resource_type == "Task" and context.institution != UNKNOWN_INSTITUTION:
            old = None if stream is None or stream.deleted or stream.resource is None else stream.resource
            check_transition(
                None if old is None else fhir_json.loads(old),
                resource,
                context.institution,
                None if stream is None else stream.owner,
                self._organization,
            )
        digest = content_hash(resource)
        if stream is not None and not stream.deleted and stream.content_hash == digest:
            # Identical content: no new version (DESIGN.md, write path step 2).
            assert stream.resource is not None
            same = Written(
                resource_type,
                resource_id,
                stream.version,
                format_instant(stream.modified_on),
                stream.resource.encode(),
                False,
            )
            return Pending(same, None)
        now = now or datetime.now(UTC)
        version = 1 if stream is None else stream.version + 1
        body = fhir_json.dumps(with_server_meta(resource, version, format_instant(now)))
        if len(body) > self.settings.max_resource_bytes:
            # One resource is one event, appended and projected in one transaction each: bounded here, so
            # no single write can hold the event table's lock for long or outgrow what a projection handles.
            raise TooLarge(
                f"{resource_type} of {len(body)} bytes is larger than the {self.settings.max_resource_bytes} "
                "bytes a resource may have (EHR_MAX_RESOURCE_BYTES)"
            )
        compartment = patient_compartment(resource) or self.security_context_compartment(resource)
        self.authorize_patient(resource, compartment, context)
        recorded = context.as_dict() | {"interaction": interaction}
        if stream is not None:
            recorded["owner"] = stream.owner
        if stream is None:
            stream = ResourceStream.start(resource_type, resource_id, body.decode(), digest, compartment, recorded, now)
            created = True
        else:
            created = stream.deleted
            stream.revise(body.decode(), digest, compartment, recorded, now)
        written = Written(resource_type, resource_id, version, format_instant(now), body, created)
        return Pending(written, stream)

    # -- committing ------------------------------------------------------------------------------

    def _append(self, events: list[Any]) -> list[Any]:
        """One transaction of the event store (what a group commit runs), keys made ready first."""
        with self.guard():
            self.keys.prepare({compartment_of(event) for event in events})
            recordings: list[Any] = self.events.put(events)
        return recordings

    def commit(self, pendings: Sequence[Pending], *others: Any) -> list[Written]:
        """Append every pending event in one atomic save: all are stored, or none is.

        ``others`` are further aggregates saved in the same transaction (e.g. an import's checkpoint).
        """
        streams = [p.stream for p in pendings if p.stream is not None]
        if not streams and not others:
            return [p.written for p in pendings]
        events = [event for aggregate in (*streams, *others) for event in aggregate.pending_events]
        ids = self._append_once(events, streams, others, pendings)
        results = []
        for pending in pendings:
            if pending.stream is None:
                results.append(pending.written)
                continue
            key = (pending.stream.id, pending.written.version)
            results.append(replace(pending.written, notification_id=ids[key], store=self.store))
        return results

    def _append_once(
        self, events: list[Any], streams: list[ResourceStream], others: Sequence[Any], pendings: Sequence[Pending]
    ) -> dict[tuple[UUID, int], int]:
        """Append ``events``; their notification ids. The event store's driver does not retry (a retry of an
        append whose COMMIT was applied, its answer lost, used to hit its own events and answer 409
        "nothing was stored"): after an error this looks at what the store holds, and retries only what
        is known not to be stored."""
        for attempt in range(_APPEND_ATTEMPTS):
            try:
                if attempt > 0:
                    recordings = self._append(events)
                elif others:
                    recordings = self.save(*streams, *others)
                else:  # Concurrent writes share a transaction (ehr_core/group_commit.py)
                    recordings = self._group.append([event for stream in streams for event in stream.collect_events()])
                return {(r.domain_event.originator_id, r.domain_event.originator_version): r.notification.id
                        for r in recordings}  # fmt: skip
            except IntegrityError:
                # A lost race, or this very write: an earlier attempt (this loop's, or the group commit's
                # shared transaction) that committed although its answer was lost.
                found = self._look(events)
                if isinstance(found, dict):
                    return found
                names = ", ".join(f"{p.written.resource_type}/{p.written.resource_id}" for p in pendings[:3])
                raise Conflict(f"{names} changed in another request at the same time; nothing was stored") from None
            except (OperationalError, InterfaceError) as error:
                if getattr(self.recorder, "notification_id_of", None) is None:
                    raise  # an embedded store (SQLite): an error means the transaction did not commit
                if _rolled_back(error):
                    message = f"the event store did not accept the write ({error}); nothing was stored"
                    raise StoreUnavailable(message) from None
                # The connection was lost: the COMMIT may have reached the store before the answer was lost.
                found = self._look(events)
                if isinstance(found, dict):
                    return found
                if found == "other":
                    names = ", ".join(f"{p.written.resource_type}/{p.written.resource_id}" for p in pendings[:3])
                    raise Conflict(f"{names} changed in another request at the same time; nothing was stored") from None
                time.sleep(0.2)  # absent: nothing of this write is stored, so it may be appended again
        raise StoreUnavailable("the event store kept losing the connection; nothing of this write is stored, retry")

    def _look(self, events: Sequence[Any]) -> dict[tuple[UUID, int], int] | str:
        """What the store holds of ``events``: their notification ids when it holds each of them as this
        write made them (same stream, version, recorded time, context and content), ``"absent"`` when
        it holds none, ``"other"`` when another write took one of their versions.

        Raises StoreUnavailable ("may have been applied") when the store cannot be read."""
        notification_id_of = getattr(self.recorder, "notification_id_of", None)
        if notification_id_of is None:
            return "other"  # cannot tell: as before, a unique-key violation is a lost race
        ids: dict[tuple[UUID, int], int] = {}
        try:
            with self.guard():
                for event in events:
                    key = (event.originator_id, event.originator_version)
                    stored = list(self.events.get(key[0], gt=key[1] - 1, lte=key[1]))
                    if not stored:
                        if ids:  # one transaction: all of it or nothing, so this cannot be ours
                            return "other"
                        continue
                    found = notification_id_of(*key)
                    if not _same_event(stored[0], event) or found is None:
                        return "other"
                    ids[key] = found
        except (OperationalError, InterfaceError, StoreUnavailable, OSError):
            raise StoreUnavailable(
                "the connection to the event store was lost during the write: the write may have been applied; "
                "read the resource before retrying"
            ) from None
        if not ids:
            return "absent"
        return ids if len(ids) == len(events) else "other"


def _same_event(stored: Any, ours: Any) -> bool:
    """Whether a stored event is the one this process made: the same kind, recorded time and context
    (the request id is in it), and for resource events the same content hash."""
    return (
        type(stored) is type(ours)
        and stored.timestamp == ours.timestamp
        and getattr(stored, "context", None) == getattr(ours, "context", None)
        and getattr(stored, "content_hash", None) == getattr(ours, "content_hash", None)
    )


def _rolled_back(error: BaseException) -> bool:
    """Whether the store answered this error itself (the transaction rolled back, nothing stored): a
    timeout or a lock it could not take, on a connection still alive. Without an answer (a lost
    connection, a socket timeout) the outcome is unknown."""
    cause = error.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    if not sqlstate:
        return False
    # 08: connection exception; 57P0x: the server or this backend was shut down or terminated.
    return not (sqlstate.startswith("08") or sqlstate.startswith("57P"))


def _check_if_match(stream: ResourceStream | None, if_match: int | None, resource_type: str, resource_id: str) -> None:
    if if_match is None:
        return
    current = stream.version if stream is not None and not stream.deleted else None
    if current != if_match:
        found = f"version {current}" if current is not None else "no current version"
        raise PreconditionFailed(
            f"If-Match expected version {if_match} of {resource_type}/{resource_id}, found {found}"
        )
