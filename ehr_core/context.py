"""Who is writing, from where and why: the context every event carries (NOM-024 traceability)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, fields
from typing import Any
from uuid import UUID

__all__ = ["WriteContext", "random_uuid"]

#: The generator of :func:`random_uuid`, private: the module-level ``random`` is everyone's to seed (a test
#: framework such as Hypothesis re-seeds it for every example, a library may call ``random.seed(0)``), and a
#: seeded global would hand out the same ids again: audit records collided on their unique key.
_ids = random.Random()  # seeded from os.urandom
# A forked server process starts with its parent's state: without a new seed both would repeat each other.
os.register_at_fork(after_in_child=_ids.seed)


def random_uuid() -> UUID:
    """A version 4 UUID from a pseudo-random generator of this module's own. ``uuid4`` reads ``os.urandom``,
    a system call that lets go of the GIL: on the event loop and in the audit writer, once per request, each
    call then waits to take the GIL back behind the worker threads (up to the 5 ms switch interval under
    load). A request id and an audit record's id must be unique, not secret; the generator is seeded from
    the OS at import and again in every forked child, and no other code can re-seed it."""
    return UUID(int=_ids.getrandbits(128), version=4)


@dataclass(frozen=True)
class WriteContext:
    institution: str = "unknown"
    unit: str | None = None  # CLUES of the health establishment
    user: str = "anonymous"
    role: str | None = None
    purpose: str = "TREAT"  # HL7 v3 PurposeOfUse
    #: Made without a system call (``random_uuid``): one per request, on the event loop.
    request_id: str = field(default_factory=lambda: random_uuid().hex)
    address: str | None = None  # the caller's network address
    interaction: str | None = None  # the FHIR interaction that wrote: create, update, delete, transaction
    #: The patient a patient-facing app writes for (SMART patient context, patient scopes only): such a
    #: writer records only what the patient may decide, their own Consent (``ehr_core.application``).
    patient: str | None = None

    def as_dict(self) -> dict[str, Any]:
        # Every field is a plain string (or None): read them as they are. ``dataclasses.asdict`` deep-copies
        # each value, and every event of a transaction Bundle records its context (15 per consultation).
        return {name: value for name in _FIELDS if (value := getattr(self, name)) is not None}


_FIELDS = tuple(f.name for f in fields(WriteContext))
