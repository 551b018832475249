"""Encryption at rest: a Mapper that seals each event's state under its patient compartment's data key.

The eventsourcing library has one cipher per application; here each event picks its key from its own
``compartment`` (the first patient id; none → the system key). Stored state::

    b"\\x01K" | key id (16 random bytes) | nonce (12) | AES-256-GCM ciphertext and tag

The associated data binds the ciphertext to its place in the log: stream id, stream version and topic. A
ciphertext moved to another stream or version does not decrypt. Topics and originator ids stay in plain
text (the library needs them); the key id is random, so the stored bytes never name a patient.

Decoding an event whose key was shredded does not raise: it yields :class:`Unreadable`, which no view or
loader mistakes for a resource event, so followers skip it (the erasure event tells views what to drop).
Events stored before encryption (plain orjson, starting with ``{``) are still read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from cryptography.exceptions import InvalidTag
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent, Transcoder
from eventsourcing.utils import get_topic

from ehr_core.keys import SYSTEM, KeyStore

__all__ = ["EncryptingMapper", "Unreadable", "associated_data", "compartment_of", "stored_key_id"]

MAGIC = b"\x01K"
_HEADER = len(MAGIC) + 16 + 12
_AAD = b"ehr-core/event/v1|"


@dataclass(frozen=True)
class Unreadable:
    """An event whose data key was destroyed: only what the log stores in plain text is known."""

    originator_id: UUID
    originator_version: int
    topic: str
    key_id: bytes

    @property
    def timestamp(self) -> datetime | None:
        return None


def associated_data(originator_id: UUID | str, version: int, topic: str) -> bytes:
    oid = originator_id.bytes if isinstance(originator_id, UUID) else str(originator_id).encode()
    return b"".join((_AAD, oid, version.to_bytes(8, "big", signed=True), topic.encode()))


def stored_key_id(state: bytes) -> bytes | None:
    """The key id of stored state (None for a plain, pre-encryption event)."""
    return bytes(state[2:18]) if state[:2] == MAGIC else None


def _compartment_of(state: dict[str, Any]) -> str:
    compartment = state.get("compartment")
    if isinstance(compartment, list | tuple) and compartment and isinstance(compartment[0], str):
        return compartment[0]
    return SYSTEM


def compartment_of(event: Any) -> str:
    """The compartment whose key seals ``event`` (what :class:`EncryptingMapper` will ask the key store for)."""
    return _compartment_of({"compartment": getattr(event, "compartment", None)})


class EncryptingMapper(Mapper[UUID]):
    def __init__(self, transcoder: Transcoder, keys: KeyStore) -> None:
        super().__init__(transcoder)
        self.keys = keys

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        topic = get_topic(domain_event.__class__)
        event_state = dict(vars(domain_event))
        originator_id = event_state.pop("originator_id")
        originator_version = event_state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            event_state["class_version"] = class_version
        plain = self.transcoder.encode(event_state)
        key = self.keys.for_compartment(_compartment_of(event_state))
        nonce = os.urandom(12)
        sealed = key.cipher.encrypt(nonce, plain, associated_data(originator_id, originator_version, topic))
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=topic,
            state=b"".join((MAGIC, key.key_id, nonce, sealed)),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        state = bytes(stored_event.state)
        if state[:2] == MAGIC:
            if len(state) < _HEADER + 16:
                raise MapperDeserialisationError(f"stored event {stored_event.originator_id} is truncated")
            key_id, nonce = state[2:18], state[18:30]
            key = self.keys.by_id(key_id)
            if key is None:
                unreadable = Unreadable(
                    cast(UUID, stored_event.originator_id), stored_event.originator_version, stored_event.topic, key_id
                )
                return cast(DomainEventProtocol[UUID], unreadable)
            aad = associated_data(stored_event.originator_id, stored_event.originator_version, stored_event.topic)
            try:
                state = key.cipher.decrypt(nonce, state[_HEADER:], aad)
            except InvalidTag:
                raise MapperDeserialisationError(
                    f"stored event {stored_event.originator_id} v{stored_event.originator_version} does not "
                    "authenticate: altered, moved to another stream or version, or the wrong key"
                ) from None
        plain = StoredEvent(stored_event.originator_id, stored_event.originator_version, stored_event.topic, state)
        event = Mapper.to_domain_event(self, plain)
        forgets = getattr(event, "forgets_key", None)
        if forgets is not None:
            # A block or shredding recorded (maybe by another process): this process's cached key goes too.
            self.keys.forget(bytes.fromhex(forgets))
        return event
