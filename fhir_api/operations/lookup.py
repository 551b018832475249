"""``GET|POST [base]/CodeSystem/$lookup`` (R4 codesystem-operation-lookup.html): the details of one code.

R4 defines it at type level only. An unknown code system, or a code it does not hold, is 404: the concept
the request names does not exist here (the spec's own server answers the same).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue, NotFound
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import OperationInput, operation_input
from fhir_api.operations.terminology import answer, coded
from fhir_api.request import ServicesDep
from fhir_api.services import Services
from projections.terminology.engine import CodeSystemIndex, holds_codes, lookup_parameters
from projections.terminology.store import TerminologyStore

router = APIRouter()


def lookup(services: Services, given: OperationInput) -> dict[str, Any]:
    system, code = coded(given, "code", "system", "coding")
    if code is None:
        raise InvalidResource([Issue("required", "code (or coding) is required", "code")])
    if system is None:
        raise InvalidResource([Issue("required", "system is required", "system")])
    version = given.first("version")
    store = services.terminology_current()
    with store.database.read() as tx:
        found = TerminologyStore.find(tx, "CodeSystem", system, version)
    if not holds_codes(found):
        named = f"{system}|{version}" if version else system
        raise NotFound([Issue("not-found", f"the code system {named} is not known to this server", "system")])
    assert found is not None
    return lookup_parameters(CodeSystemIndex(found), code, given.all("property"))


@router.get("/CodeSystem/$lookup", summary="CodeSystem $lookup")
@router.post("/CodeSystem/$lookup", summary="CodeSystem $lookup (POST, Parameters body)")
async def code_system_lookup(request: Request, services: ServicesDep) -> Response:
    return await answer(lookup, services, await operation_input(request, by_id("lookup")))
