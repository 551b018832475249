"""What a projection sees of one event: a :class:`Change`, decoded once per batch for every view."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ehr_core.application import format_instant
from ehr_core.streams import ResourceStream

__all__ = ["Change", "change_from_event"]


@dataclass(frozen=True)
class Change:
    notification_id: int
    resource_type: str
    resource_id: str
    version: int
    last_updated: str
    recorded: datetime
    #: The HTTP method of the history entry: POST, PUT, PATCH or DELETE.
    method: str
    #: The stored resource; None for a retraction.
    body: bytes | None
    compartment: list[str]
    context: dict[str, Any]

    @property
    def deleted(self) -> bool:
        return self.body is None


def change_from_event(notification_id: int, event: Any) -> Change | None:
    """The change an event makes, or None for events no resource view cares about."""
    if isinstance(event, ResourceStream.Started):
        method = "PUT" if event.context.get("interaction") == "update" else "POST"
        body: bytes | None = event.resource.encode()
    elif isinstance(event, ResourceStream.Revised):
        # R4 Bundle.entry.request.method: "in a history bundle, this indicates the HTTP action that occurred".
        method = "PATCH" if event.context.get("interaction") == "patch" else "PUT"
        body = event.resource.encode()
    elif isinstance(event, ResourceStream.Retracted):
        method, body = "DELETE", None
    else:
        return None
    return Change(
        notification_id=notification_id,
        resource_type=event.resource_type,
        resource_id=event.resource_id,
        version=event.originator_version,
        last_updated=format_instant(event.timestamp),
        recorded=event.timestamp,
        method=method,
        body=body,
        compartment=list(event.compartment),
        context=dict(event.context),
    )
