"""``GET|POST [base]/ValueSet/$expand`` and ``[base]/ValueSet/[id]/$expand`` (R4
valueset-operation-expand.html): the codes of a value set, one page of them.

The value set is named by ``url`` (a stored one, or one of the spec's), posted as ``valueSet``, or the
instance. ``filter`` narrows by text, ``offset`` and ``count`` page (``expansion.total`` counts every code
the filter keeps, ``expansion.offset`` says where the page starts). An unknown value set is 404; one this
server cannot expand (an external terminology drawn on whole, such as SNOMED CT or LOINC: ``too-costly``) is
422, see :mod:`projections.terminology.engine`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import OperationInput, operation_input
from fhir_api.operations.terminology import answer, non_negative, target_value_set
from fhir_api.request import ServicesDep
from fhir_api.services import Services
from projections.terminology.engine import expand
from projections.terminology.store import TerminologyStore

router = APIRouter()


def expand_value_set(services: Services, given: OperationInput, resource_id: str | None) -> dict[str, Any]:
    offset = non_negative(given, "offset") or 0
    count = non_negative(given, "count")
    store = services.terminology_current()
    with store.database.read() as tx:
        value_set = target_value_set(tx, given, resource_id)
        return expand(
            TerminologyStore.resolver(tx),
            value_set,
            text=given.first("filter"),
            offset=offset,
            count=count,
            identifier=f"urn:uuid:{uuid.uuid4()}",
            timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        )


@router.get("/ValueSet/$expand", summary="ValueSet $expand")
@router.post("/ValueSet/$expand", summary="ValueSet $expand (POST, Parameters body)")
async def value_set_expand(request: Request, services: ServicesDep) -> Response:
    return await answer(expand_value_set, services, await operation_input(request, by_id("expand")), None)


@router.get("/ValueSet/{resource_id}/$expand", summary="ValueSet $expand (instance)")
@router.post("/ValueSet/{resource_id}/$expand", summary="ValueSet $expand (instance, POST)")
async def value_set_instance_expand(request: Request, resource_id: str, services: ServicesDep) -> Response:
    return await answer(expand_value_set, services, await operation_input(request, by_id("expand")), resource_id)
