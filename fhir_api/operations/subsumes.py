"""``GET|POST [base]/CodeSystem/$subsumes`` and ``[base]/CodeSystem/[id]/$subsumes`` (R4
codesystem-operation-subsumes.html): equivalent, subsumes, subsumed-by or not-subsumed.

An unknown code system is 404 (the operation's subject does not exist); a code it does not hold is 422: the
request is well formed, but names no concept to compare.
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
from projections.terminology.engine import CodeSystemIndex, holds_codes, subsumption
from projections.terminology.store import TerminologyStore

router = APIRouter()


def subsumes(services: Services, given: OperationInput, resource_id: str | None) -> dict[str, Any]:
    system_a, code_a = coded(given, "codeA", "system", "codingA")
    system_b, code_b = coded(given, "codeB", "system", "codingB")
    if code_a is None or code_b is None:
        raise InvalidResource([Issue("required", "codeA and codeB (or codingA and codingB) are required")])
    if system_a and system_b and system_a != system_b:
        raise InvalidResource([Issue("invalid", "codingA and codingB must be of the same code system", "codingB")])
    system = system_a or system_b
    store = services.terminology_current()
    with store.database.read() as tx:
        if resource_id is not None:
            found = TerminologyStore.read(tx, "CodeSystem", resource_id)
            if found is None:
                raise NotFound(f"CodeSystem/{resource_id} is not known to this server")
            if system is not None and system != found.get("url"):
                raise InvalidResource([Issue("invalid", f"CodeSystem/{resource_id} is not {system}", "system")])
        else:
            if system is None:
                raise InvalidResource([Issue("required", "system is required at type level", "system")])
            found = TerminologyStore.find(tx, "CodeSystem", system, given.first("version"))
            if not holds_codes(found):
                raise NotFound([Issue("not-found", f"the code system {system} is not known to this server", "system")])
    assert found is not None
    outcome = subsumption(CodeSystemIndex(found), code_a, code_b)
    return {"resourceType": "Parameters", "parameter": [{"name": "outcome", "valueCode": outcome}]}


@router.get("/CodeSystem/$subsumes", summary="CodeSystem $subsumes")
@router.post("/CodeSystem/$subsumes", summary="CodeSystem $subsumes (POST, Parameters body)")
async def code_system_subsumes(request: Request, services: ServicesDep) -> Response:
    return await answer(subsumes, services, await operation_input(request, by_id("subsumes")), None)


@router.get("/CodeSystem/{resource_id}/$subsumes", summary="CodeSystem $subsumes (instance)")
@router.post("/CodeSystem/{resource_id}/$subsumes", summary="CodeSystem $subsumes (instance, POST)")
async def code_system_instance_subsumes(request: Request, resource_id: str, services: ServicesDep) -> Response:
    return await answer(subsumes, services, await operation_input(request, by_id("subsumes")), resource_id)
