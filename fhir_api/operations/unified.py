"""Shared by the identity operations: linked records, attribution of entries, Bundle assembly."""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import quote

import orjson

from ehr_core.errors import Deleted, NotFound
from ehr_core.resources import json as fhir_json
from fhir_api.services import Services
from projections.db import Tx
from projections.identity import IdentityIndex
from projections.resources import ResourceViews

__all__ = ["SOURCE_PREFIX", "attributed", "linked_patients", "source_uri"]

SOURCE_PREFIX = "urn:ehr-core:source:"


@lru_cache(maxsize=4096)
def source_uri(institution: str, unit: str | None) -> str:
    """``meta.source`` naming who recorded an entry: ``urn:ehr-core:source:{institution}:{CLUES}``."""
    return f"{SOURCE_PREFIX}{quote(institution, safe='-')}:{quote(unit or 'unknown', safe='-')}"


def attributed(body: bytes, institution: str, unit: str | None) -> bytes:
    """The stored bytes with ``meta.source`` set to the writer's institution and unit, unless the client
    gave its own. The stored resource is not changed; only the served copy carries the attribution."""
    start = body.find(b'"meta":{')
    contained = body.find(b'"contained":')
    if start < 0 or 0 <= contained < start:
        resource = fhir_json.loads(body)
        meta = resource.setdefault("meta", {})
        meta.setdefault("source", source_uri(institution, unit))
        return fhir_json.dumps(resource)
    server = body.find(b'"versionId":', start)
    if body.find(b'"source":', start, server if server > 0 else len(body)) >= 0:
        return body
    at = start + len(b'"meta":{')
    return body[:at] + b'"source":' + orjson.dumps(source_uri(institution, unit)) + b"," + body[at:]


def linked_patients(services: Services, tx: Tx, patient_id: str) -> list[str]:
    """The Patient ids of the same person (the asked-for record first); 404/410 for an unknown record."""
    stored = ResourceViews.read(tx, "Patient", patient_id)
    if stored is None:
        raise NotFound(f"Patient/{patient_id} is not known")
    if stored.deleted:
        raise Deleted(f"Patient/{patient_id} was deleted")
    return IdentityIndex.linked_records(tx, patient_id)


def bundle(fields: dict[str, Any], entries: list[dict[str, Any]]) -> bytes:
    """A Bundle with entries whose ``resource`` may be ``orjson.Fragment`` (stored bytes, not re-parsed)."""
    return orjson.dumps(
        {"resourceType": "Bundle", **fields, "entry": entries} if entries else {"resourceType": "Bundle", **fields}
    )
