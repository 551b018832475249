"""``POST [base]/Patient/$match`` (PDQm ITI-119) and ``GET [base]/Patient/$ihe-pix`` (PIXm ITI-83).

$match: a Patient in (alone, or as the ``resource`` parameter of a Parameters), a searchset Bundle out,
best first, each entry with ``search.score`` (0..1) and the match-grade extension; ``onlyCertainMatches``
and ``count`` as in the spec. Scores come from the same matcher as the master patient index.

$ihe-pix: ``sourceIdentifier=system|value`` (and optional ``targetSystem``) → Parameters with every
identifier (``targetIdentifier``) and record (``targetId``) of the same person across institutions.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue, NotFound
from ehr_core.identity.features import patient_features
from ehr_core.identity.matching import PROBABLE, Grade, compare
from fhir_api.operations.unified import bundle
from fhir_api.request import ServicesDep, base_url, read_json_body
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from projections.identity import IdentityIndex
from projections.resources import ResourceViews

router = APIRouter()

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


def _score(grade: Grade, score: float) -> float:
    """A 0..1 score: 1 for certain; Fellegi-Sunter weights scaled so the probable threshold is 0.8."""
    if grade == Grade.CERTAIN:
        return 1.0
    return round(max(0.0, min(0.99, 0.8 * score / PROBABLE)), 3)


def match(services: Services, base: str, patient: dict[str, Any], only_certain: bool, count: int | None) -> bytes:
    features = patient_features(patient)
    services.identity_current()
    with services.views.read() as tx:
        candidates = IdentityIndex.candidates(tx, features, limit=1000)
        scored = []
        for candidate in candidates:
            result = compare(features, candidate.features)
            if result.grade == Grade.CERTAINLY_NOT or (only_certain and result.grade != Grade.CERTAIN):
                continue
            scored.append((_score(result.grade, result.score), result.grade, candidate.record.split("/", 1)[1]))
        scored.sort(key=lambda item: (-item[0], item[2]))
        if count is not None:
            scored = scored[:count]
        entries = []
        for score, grade, patient_id in scored:
            stored = ResourceViews.read(tx, "Patient", patient_id)
            if stored is None or stored.body is None:
                continue
            entries.append(
                {
                    "fullUrl": f"{base}/Patient/{patient_id}",
                    "resource": orjson.Fragment(stored.body),
                    "search": {
                        "extension": [{"url": MATCH_GRADE, "valueCode": str(grade)}],
                        "mode": "match",
                        "score": score,
                    },
                }
            )
    return bundle({"type": "searchset", "total": len(entries)}, entries)


def _parameters(body: Any) -> tuple[dict[str, Any], bool, int | None]:
    if isinstance(body, dict) and body.get("resourceType") == "Patient":
        return body, False, None
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidResource([Issue("invalid", "$match takes a Parameters resource (or a Patient)")])
    patient, only_certain, count = None, False, None
    for parameter in body.get("parameter") or []:
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if name == "resource":
            patient = parameter.get("resource")
        elif name == "onlyCertainMatches":
            only_certain = bool(parameter.get("valueBoolean"))
        elif name == "count":
            value = parameter.get("valueInteger")
            if not isinstance(value, int) or value < 1:
                raise InvalidResource([Issue("invalid", "count must be a positive integer", "count")])
            count = value
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise InvalidResource([Issue("required", "the resource parameter must hold a Patient", "resource")])
    return patient, only_certain, count


@router.post("/Patient/$match", summary="Patient $match (PDQm)")
async def patient_match(request: Request, services: ServicesDep) -> Response:
    patient, only_certain, count = _parameters(await read_json_body(request))
    body = await run_in_threadpool(match, services, base_url(request), patient, only_certain, count)
    return Response(body, media_type=FHIR_JSON)


def pix(services: Services, source: str, targets: list[str]) -> bytes:
    system, bar, value = source.partition("|")
    if not bar or not system or not value:
        raise InvalidResource([Issue("invalid", "sourceIdentifier must be system|value", "sourceIdentifier")])
    identity = services.identity_current()
    with identity.database.read() as tx:
        sources = IdentityIndex.records_with_identifier(tx, system, value)
        if not sources:
            raise NotFound(f"no Patient has the identifier {source}")
        records: list[str] = []
        for record in sources:
            for linked in IdentityIndex.linked_records(tx, record):
                if linked not in records:
                    records.append(linked)
        features = IdentityIndex.features_of(tx, records)
    parameters: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for record in records:
        for pair in features[record].identifiers if record in features else []:
            if (targets and pair[0] not in targets) or pair in seen or pair == (system, value):
                continue
            seen.add(pair)
            parameters.append({"name": "targetIdentifier", "valueIdentifier": {"system": pair[0], "value": pair[1]}})
    for record in records:
        parameters.append({"name": "targetId", "valueReference": {"reference": f"Patient/{record}"}})
    return orjson.dumps({"resourceType": "Parameters", "parameter": parameters})


@router.get("/Patient/$ihe-pix", summary="Patient $ihe-pix (PIXm)")
async def patient_pix(
    services: ServicesDep,
    source: Annotated[str, Query(alias="sourceIdentifier")],
    targets: Annotated[list[str] | None, Query(alias="targetSystem")] = None,
) -> Response:
    target_list = [t for value in targets or [] for t in value.split(",") if t]
    body = await run_in_threadpool(pix, services, source, target_list)
    return Response(body, media_type=FHIR_JSON)
