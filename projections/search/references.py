"""Reading a reference's target (R4 §3.1.1.5.9 "reference", §2.3.0 "Resource References").

``Patient/123``, ``Patient/123/_history/2`` and ``http://server/fhir/Patient/123`` all name a type and an
id; an absolute URL also names its server's base. A canonical (``http://hl7.org/fhir/ValueSet/x|4.0``)
or any other URL that does not end in ``Type/id`` is kept whole, with no type.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

from ehr_core.resources.types import supported_types

__all__ = ["parse_reference"]

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@cache
def _types() -> frozenset[str]:
    return frozenset(supported_types())


@lru_cache(maxsize=4096)
def parse_reference(literal: str) -> tuple[str | None, str, str | None]:
    """``(target_type, target_id, base)``: base is None for a relative reference; type is None when unknown.

    Kept for the literals seen last: one reference is read by several parameters (an Observation's
    ``subject`` by ``subject`` and ``patient``), and a record's resources name the same patient."""
    text = literal.strip()
    path = text.split("|")[0] if "://" in text or text.startswith("urn:") else text
    parts = path.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] in _types() and _ID.match(parts[-1]):
        base = "/".join(parts[:-2]) or None
        if base is None or "://" in base:
            return parts[-2], parts[-1], base
    return None, text, None
