"""Who is writing, from where and why: the context every event carries (NOM-024 traceability)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any
from uuid import uuid4

__all__ = ["WriteContext"]


@dataclass(frozen=True)
class WriteContext:
    institution: str = "unknown"
    unit: str | None = None  # CLUES of the health establishment
    user: str = "anonymous"
    role: str | None = None
    purpose: str = "TREAT"  # HL7 v3 PurposeOfUse
    request_id: str = field(default_factory=lambda: uuid4().hex)
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
