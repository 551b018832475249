"""Streams: one event-sourced aggregate per FHIR resource instance (DESIGN.md "Streams").

The stream version *is* the FHIR ``versionId``. Every event carries the whole resource as received, so
the latest event alone is the current state: loading a stream reads one event, never the whole history.

Event class names are stored in plain text (as topics), so they say nothing clinical.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

__all__ = ["ResourceStream", "stream_id"]

# A fixed namespace so that ``Patient/1`` names the same stream in every deployment.
_NAMESPACE = uuid5(NAMESPACE_URL, "urn:ehr-core:resource-stream")


def stream_id(resource_type: str, resource_id: str) -> UUID:
    """The stream of ``Type/id`` (UUIDv5): deterministic, so no lookup table is needed."""
    return uuid5(_NAMESPACE, f"{resource_type}/{resource_id}")


class ResourceStream(Aggregate):
    """The versions of one FHIR resource instance, and its retraction."""

    class Started(Aggregate.Created):
        """The first version."""

        resource_type: str
        resource_id: str
        resource: str
        content_hash: str
        compartment: list[str]
        context: dict[str, Any]

    class Revised(Aggregate.Event):
        """A new version (also the re-creation of a retracted resource)."""

        resource_type: str
        resource_id: str
        resource: str
        content_hash: str
        compartment: list[str]
        context: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            stream = cast(ResourceStream, aggregate)
            stream.resource = self.resource
            stream.content_hash = self.content_hash
            stream.compartment = self.compartment
            stream.deleted = False

    class Retracted(Aggregate.Event):
        """FHIR delete: a tombstone; the earlier versions stay in the history."""

        resource_type: str
        resource_id: str
        compartment: list[str]
        context: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            stream = cast(ResourceStream, aggregate)
            stream.resource = None
            stream.content_hash = None
            stream.deleted = True

    def __init__(
        self,
        resource_type: str,
        resource_id: str,
        resource: str,
        content_hash: str,
        compartment: list[str],
        context: dict[str, Any],
    ) -> None:
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.resource: str | None = resource
        self.content_hash: str | None = content_hash
        self.compartment = compartment
        self.deleted = False
        #: The institution that recorded the first version: the only one that may change the resource.
        self.owner: str | None = str(context.get("institution", "unknown"))

    @classmethod
    def start(
        cls,
        resource_type: str,
        resource_id: str,
        resource: str,
        content_hash: str,
        compartment: list[str],
        context: dict[str, Any],
        timestamp: datetime,
    ) -> ResourceStream:
        return cls._create(
            cls.Started,
            id=stream_id(resource_type, resource_id),
            resource_type=resource_type,
            resource_id=resource_id,
            resource=resource,
            content_hash=content_hash,
            compartment=compartment,
            context=context,
            timestamp=timestamp,
        )

    def revise(
        self,
        resource: str,
        content_hash: str,
        compartment: list[str],
        context: dict[str, Any],
        timestamp: datetime,
    ) -> None:
        self.trigger_event(
            self.Revised,
            resource_type=self.resource_type,
            resource_id=self.resource_id,
            resource=resource,
            content_hash=content_hash,
            compartment=compartment,
            context=context,
            timestamp=timestamp,
        )

    def retract(self, context: dict[str, Any], timestamp: datetime) -> None:
        self.trigger_event(
            self.Retracted,
            resource_type=self.resource_type,
            resource_id=self.resource_id,
            compartment=self.compartment,
            context=context,
            timestamp=timestamp,
        )

    @classmethod
    def from_latest(cls, event: Any) -> ResourceStream:
        """Rebuild the stream from its latest event alone (each event holds the whole state)."""
        stream = object.__new__(cls)
        stream.__base_init__(event.originator_id, event.originator_version, event.timestamp)
        stream.resource_type = event.resource_type
        stream.resource_id = event.resource_id
        stream.compartment = list(event.compartment)
        retracted = isinstance(event, cls.Retracted)
        stream.resource = None if retracted else event.resource
        stream.content_hash = None if retracted else event.content_hash
        stream.deleted = retracted
        # Every event names the stream's owner (the first version's institution); events written before
        # that was recorded do not, and the application then asks the first event (see ``owner``).
        context = event.context or {}
        first = isinstance(event, cls.Started)
        owner = context.get("institution") if first else context.get("owner")
        stream.owner = str(owner) if owner is not None else None
        return stream
