"""read and vread: ``GET [base]/[type]/[id]`` and ``.../_history/[vid]`` (R4 §3.1.0.2, §3.1.0.3).

Both serve the stored bytes as they are: no model, no re-serialisation.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from ehr_core.errors import Deleted, InvalidResource, Issue, NotFound
from ehr_core.numbers import parse_int
from fhir_api.request import ServicesDep, require_type
from fhir_api.responses import fhir_response
from fhir_api.services import Services
from projections.asof import normalise_instant, read_as_of
from projections.resources import ResourceViews, StoredResource

router = APIRouter()


def _served(stored: StoredResource | None, what: str) -> Response:
    if stored is None:
        raise NotFound(f"{what} is not known")
    if stored.deleted:  # 410 with the deleted version's ETag and Last-Modified (fhir_api/errors.py)
        version, deleted = stored.version, stored.last_updated
        raise Deleted(f"{what} was deleted (version {version})", version=version, last_updated=deleted)
    return fhir_response(stored.body, version=stored.version, last_updated=stored.last_updated)


@router.get("/{resource_type}/{resource_id}", summary="read")
def read(
    resource_type: str, resource_id: str, services: ServicesDep, at: Annotated[str | None, Query(alias="_at")] = None
) -> Response:
    require_type(resource_type)
    if at is not None:  # As-of read, the version current at a recorded instant
        return _read_as_of(services, resource_type, resource_id, at)
    with services.views.read() as tx:
        stored = ResourceViews.read(tx, resource_type, resource_id)
    return _served(stored, f"{resource_type}/{resource_id}")


def _read_as_of(services: Services, resource_type: str, resource_id: str, at: str) -> Response:
    """``GET [type]/[id]?_at=instant`` (see projections/asof.py)."""
    try:
        instant = normalise_instant(at)
    except ValueError:
        raise InvalidResource(
            [Issue("invalid", f"_at must be an instant with a time zone, got {at!r}", "_at")]
        ) from None
    with services.views.read() as tx:
        stored = read_as_of(tx, resource_type, resource_id, instant)
    return _served(stored, f"{resource_type}/{resource_id} at {instant}")


@router.get("/{resource_type}/{resource_id}/_history/{version_id}", summary="vread")
def vread(resource_type: str, resource_id: str, version_id: str, services: ServicesDep) -> Response:
    require_type(resource_type)
    version = parse_int(version_id)  # Beyond 64 bits, a version that does not exist
    if version is None:
        raise InvalidResource([Issue("invalid", f"version id must be a number, got {version_id!r}")])
    with services.views.read() as tx:
        stored = ResourceViews.vread(tx, resource_type, resource_id, version)
    return _served(stored, f"{resource_type}/{resource_id}/_history/{version_id}")
