"""``GET|POST [base]/ConceptMap/$translate`` and ``[base]/ConceptMap/[id]/$translate`` (R4
conceptmap-operation-translate.html): a code's mappings in the ConceptMaps users stored.

At type level every stored ConceptMap is searched, narrowed by ``url``, ``source`` and ``target`` (the
value sets a map is between); no mapping is the answer (``result`` false), not an error. A ``url`` no stored
map has, or an instance that does not exist, is 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue, NotFound
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import OperationInput, operation_input
from fhir_api.operations.terminology import answer, canonical, coded
from fhir_api.request import ServicesDep
from fhir_api.services import Services
from projections.terminology.engine import translate
from projections.terminology.store import TerminologyStore

router = APIRouter()


def _between(concept_map: dict[str, Any], side: str, wanted: str | None) -> bool:
    """Whether the map's source (or target) value set is ``wanted`` (R4: ``source[x]``, ``target[x]``)."""
    if wanted is None:
        return True
    named = concept_map.get(f"{side}Uri") or concept_map.get(f"{side}Canonical")
    return isinstance(named, str) and canonical(named)[0] == canonical(wanted)[0]


def translate_code(services: Services, given: OperationInput, resource_id: str | None) -> dict[str, Any]:
    system, code = coded(given, "code", "system", "coding")
    if code is None:
        raise InvalidResource([Issue("required", "code (or coding) is required", "code")])
    reverse = given.first("reverse") == "true"
    store = services.terminology_current()
    with store.database.read() as tx:
        if resource_id is not None:
            found = TerminologyStore.read(tx, "ConceptMap", resource_id)
            if found is None:
                raise NotFound(f"ConceptMap/{resource_id} is not known to this server")
            maps = [found]
        else:
            url = given.first("url")
            maps = TerminologyStore.concept_maps(tx, canonical(url)[0] if url else None)
            if url and not maps:
                raise NotFound([Issue("not-found", f"no ConceptMap {url} is stored here", "url")])
    source, target = given.first("source"), given.first("target")
    if reverse:
        source, target = target, source
    maps = [m for m in maps if _between(m, "source", source) and _between(m, "target", target)]
    return translate(maps, system, code, given.first("targetsystem"), reverse)


@router.get("/ConceptMap/$translate", summary="ConceptMap $translate")
@router.post("/ConceptMap/$translate", summary="ConceptMap $translate (POST, Parameters body)")
async def concept_map_translate(request: Request, services: ServicesDep) -> Response:
    return await answer(translate_code, services, await operation_input(request, by_id("translate")), None)


@router.get("/ConceptMap/{resource_id}/$translate", summary="ConceptMap $translate (instance)")
@router.post("/ConceptMap/{resource_id}/$translate", summary="ConceptMap $translate (instance, POST)")
async def concept_map_instance_translate(request: Request, resource_id: str, services: ServicesDep) -> Response:
    return await answer(translate_code, services, await operation_input(request, by_id("translate")), resource_id)
