"""``GET|POST [base]/ValueSet/$validate-code`` and ``[base]/ValueSet/[id]/$validate-code`` (R4
valueset-operation-validate-code.html): whether a code is in a value set.

A code that is not in it, or of a code system not known here, is the answer (``result`` false, with a
``message``), not an error; a wrong ``display`` is too. An unknown value set is 404, and one that cannot be
expanded here 422, as for ``$expand``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import OperationInput, operation_input
from fhir_api.operations.terminology import answer, coded, target_value_set
from fhir_api.request import ServicesDep
from fhir_api.services import Services
from projections.terminology.engine import validate_code
from projections.terminology.store import TerminologyStore

router = APIRouter()


def validate(services: Services, given: OperationInput, resource_id: str | None) -> dict[str, Any]:
    system, code = coded(given, "code", "system", "coding")
    if code is None:
        raise InvalidResource([Issue("required", "code (or coding) is required", "code")])
    store = services.terminology_current()
    with store.database.read() as tx:
        value_set = target_value_set(tx, given, resource_id)
        return validate_code(TerminologyStore.resolver(tx), value_set, system, code, given.first("display"))


@router.get("/ValueSet/$validate-code", summary="ValueSet $validate-code")
@router.post("/ValueSet/$validate-code", summary="ValueSet $validate-code (POST, Parameters body)")
async def value_set_validate_code(request: Request, services: ServicesDep) -> Response:
    return await answer(validate, services, await operation_input(request, by_id("validate-code")), None)


@router.get("/ValueSet/{resource_id}/$validate-code", summary="ValueSet $validate-code (instance)")
@router.post("/ValueSet/{resource_id}/$validate-code", summary="ValueSet $validate-code (instance, POST)")
async def value_set_instance_validate_code(request: Request, resource_id: str, services: ServicesDep) -> Response:
    return await answer(validate, services, await operation_input(request, by_id("validate-code")), resource_id)
