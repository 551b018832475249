"""The application service: validate, version, hash and append (DESIGN.md "Write path").

Methods are thin, one per FHIR write interaction. Each returns a :class:`Written` that carries the
notification id of what it appended, so the caller can wait for the projections to reach it
(read-your-writes) before answering.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, Transcoder

from ehr_core.compartment import patient_compartment
from ehr_core.context import WriteContext
from ehr_core.errors import Conflict, Deleted, InvalidResource, Issue, NotFound, PreconditionFailed
from ehr_core.resources import json as fhir_json
from ehr_core.resources.validation import is_valid_id, validate
from ehr_core.settings import Settings
from ehr_core.streams import ResourceStream, stream_id
from ehr_core.transcoder import EventTranscoder

__all__ = ["RecordApplication", "Written", "format_instant"]

# Concurrent writers without If-Match: retry the read-modify-append this many times before a 409.
_RETRIES = 5


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
    notification_id: int | None


class RecordApplication(Application[UUID]):
    """Appends FHIR resource versions to the event log, one stream per resource instance."""

    name = "ehr"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__(env=settings.event_store_env())

    def construct_transcoder(self) -> Transcoder:
        return EventTranscoder()

    # -- loading ---------------------------------------------------------------------------------

    def stream(self, resource_type: str, resource_id: str) -> ResourceStream | None:
        """The stream of ``Type/id`` as of its latest event, or None if it was never written."""
        latest = list(self.events.get(stream_id(resource_type, resource_id), desc=True, limit=1))
        return ResourceStream.from_latest(latest[0]) if latest else None

    # -- interactions ----------------------------------------------------------------------------

    def create(self, resource: Any, context: WriteContext, resource_type: str | None = None) -> Written:
        """FHIR create: the server assigns the id (any id in the body is replaced, R4 §3.1.0.7)."""
        validate(resource, resource_type)
        resource = dict(resource)
        resource["id"] = str(uuid4())
        # Keep the key order of the client's body, with the new id where the client put one.
        ordered = {"resourceType": resource.pop("resourceType"), "id": resource.pop("id"), **resource}
        return self._append(None, ordered, context)

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: Any,
        context: WriteContext,
        if_match: int | None = None,
    ) -> Written:
        """FHIR update, including create-on-update with a client-chosen id (R4 §3.1.0.4)."""
        if not is_valid_id(resource_id):
            raise InvalidResource([Issue("value", f"invalid id {resource_id!r}")])
        validate(resource, resource_type)
        body_id = resource.get("id")
        if body_id is None:
            raise InvalidResource([Issue("required", "the resource must have an id", f"{resource_type}.id")])
        if body_id != resource_id:
            message = f"id in the body ({body_id}) does not match the id in the URL ({resource_id})"
            raise InvalidResource([Issue("invalid", message, f"{resource_type}.id")])
        for attempt in range(_RETRIES):
            stream = self.stream(resource_type, resource_id)
            self._check_if_match(stream, if_match, resource_type, resource_id)
            try:
                return self._append(stream, resource, context)
            except IntegrityError:
                if if_match is not None or attempt == _RETRIES - 1:
                    break
        raise Conflict(f"{resource_type}/{resource_id} was changed by another request at the same time")

    def delete(
        self, resource_type: str, resource_id: str, context: WriteContext, if_match: int | None = None
    ) -> Written | None:
        """FHIR delete: append a retraction. Deleting what is absent or already deleted appends nothing."""
        for _ in range(_RETRIES):
            stream = self.stream(resource_type, resource_id)
            self._check_if_match(stream, if_match, resource_type, resource_id)
            if stream is None or stream.deleted:
                return None
            now = datetime.now(UTC)
            stream.retract(context.as_dict(), now)
            try:
                recordings = self.save(stream)
            except IntegrityError:
                if if_match is not None:
                    break
                continue
            return Written(
                resource_type,
                resource_id,
                stream.version,
                format_instant(now),
                None,
                False,
                recordings[-1].notification.id,
            )
        raise Conflict(f"{resource_type}/{resource_id} was changed by another request at the same time")

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _check_if_match(
        stream: ResourceStream | None, if_match: int | None, resource_type: str, resource_id: str
    ) -> None:
        if if_match is None:
            return
        current = stream.version if stream is not None else None
        if current != if_match:
            found = f"version {current}" if current is not None else "no version"
            raise PreconditionFailed(
                f"If-Match expected version {if_match} of {resource_type}/{resource_id}, found {found}"
            )

    def _append(self, stream: ResourceStream | None, resource: dict[str, Any], context: WriteContext) -> Written:
        resource_type, resource_id = resource["resourceType"], resource["id"]
        digest = content_hash(resource)
        if stream is not None and not stream.deleted and stream.content_hash == digest:
            # Identical content: no new version (DESIGN.md, write path step 2).
            assert stream.resource is not None
            return Written(
                resource_type,
                resource_id,
                stream.version,
                format_instant(stream.modified_on),
                stream.resource.encode(),
                False,
                None,
            )
        now = datetime.now(UTC)
        version = 1 if stream is None else stream.version + 1
        body = fhir_json.dumps(with_server_meta(resource, version, format_instant(now)))
        compartment = patient_compartment(resource)
        if stream is None:
            stream = ResourceStream.start(
                resource_type, resource_id, body.decode(), digest, compartment, context.as_dict(), now
            )
            created = True
        else:
            created = stream.deleted
            stream.revise(body.decode(), digest, compartment, context.as_dict(), now)
        recordings = self.save(stream)
        return Written(
            resource_type,
            resource_id,
            version,
            format_instant(now),
            body,
            created,
            recordings[-1].notification.id,
        )

    def require_current(self, resource_type: str, resource_id: str) -> ResourceStream:
        """The live stream, or NotFound / Deleted (for interactions that need an existing resource)."""
        stream = self.stream(resource_type, resource_id)
        if stream is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if stream.deleted:
            raise Deleted(f"{resource_type}/{resource_id} was deleted")
        return stream
