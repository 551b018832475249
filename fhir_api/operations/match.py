"""``POST [base]/Patient/$match`` (PDQm ITI-119) and ``GET [base]/Patient/$ihe-pix`` (PIXm ITI-83).

$match: a Patient in (alone, or as the ``resource`` parameter of a Parameters), a searchset Bundle out,
best first, each entry with ``search.score`` (0..1) and the match-grade extension; ``onlyCertainMatches``
and ``count`` as in the spec. Scores come from the same matcher as the master patient index.

$ihe-pix: ``sourceIdentifier=system|value`` (and optional ``targetSystem``) → Parameters with every
identifier (``targetIdentifier``) and record (``targetId``) of the same person across institutions.

With auth on, one rule for both (and for ``Person/$review``): a Patient record, and the identifiers
it carries, is disclosed only when the caller may read that record (the access policy of
:mod:`fhir_api.access`: its institution recorded it, or an active Consent of the patient names the caller's
institution, or the caller broke the glass, which is then flagged, listed for review and audited). So a
``$match`` lists, scores and counts only readable records; ``$ihe-pix`` answers 404 when no readable record
has the source identifier, and lists only the readable linked records and their identifiers (another
institution's identifiers of the same person need that person's consent).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue, NotFound
from ehr_core.identity.features import patient_features
from ehr_core.identity.matching import PROBABLE, Grade, compare
from ehr_core.numbers import parse_int
from fhir_api.access import record_break_glass
from fhir_api.auth import caller_of
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import operation_input, query_input
from fhir_api.operations.unified import bundle
from fhir_api.request import ServicesDep, base_url, read_json_body
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.access import Viewer, visible_ids
from projections.db import Tx
from projections.identity import IdentityIndex
from projections.resources import ResourceViews

router = APIRouter()

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


def _score(grade: Grade, score: float) -> float:
    """A 0..1 score: 1 for certain; Fellegi-Sunter weights scaled so the probable threshold is 0.8."""
    if grade == Grade.CERTAIN:
        return 1.0
    return round(max(0.0, min(0.99, 0.8 * score / PROBABLE)), 3)


@dataclass
class Disclosure:
    """Which Patient records an operation of the patient index may disclose to the caller."""

    #: None: auth is off, every record.
    viewer: Viewer | None = None
    #: The break-the-glass reason, if the caller gave one.
    reason: str | None = None
    #: Some record was disclosed only because the glass was broken.
    beyond_policy: bool = False

    @classmethod
    def of(cls, request: Request) -> Disclosure:
        caller = caller_of(request)
        reason = request.headers.get("x-ehr-break-glass", "").strip() or None
        return cls(caller.viewer() if caller is not None else None, reason)

    def readable(self, tx: Tx, ids: list[str]) -> set[str]:
        """Those of the Patient ``ids`` the caller may read."""
        if self.viewer is None:
            return set(ids)
        permitted = visible_ids(tx, self.viewer, "Patient", ids)
        if self.reason is None:
            return permitted
        everything = visible_ids(tx, replace(self.viewer, break_glass=True), "Patient", ids)
        self.beyond_policy |= bool(everything - permitted)
        return everything

    def finish(self, services: Services, request: Request, what: str) -> dict[str, str]:
        """Audit notes and response headers once the answer is built: filtered, and break-the-glass."""
        if self.viewer is None:
            return {}
        request.state.ehr_access = "filtered"  # for the audit entry
        caller = caller_of(request)
        if not self.beyond_policy or self.reason is None or caller is None:
            return {}
        record_break_glass(services, caller.claims, self.reason, what)
        request.state.ehr_break_glass = True
        return {"X-EHR-Break-Glass": "granted"}


def match(
    services: Services,
    base: str,
    patient: dict[str, Any],
    only_certain: bool,
    count: int | None,
    disclosure: Disclosure | None = None,
) -> bytes:
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
        if disclosure is not None:
            # Filtered before ``count``, so a hidden better match neither shows nor takes a place.
            readable = disclosure.readable(tx, [item[2] for item in scored])
            scored = [item for item in scored if item[2] in readable]
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
    known = by_id("match").in_parameters
    for parameter in body.get("parameter") or []:
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if name not in known:
            # R4 operations.html: the parameters are those the OperationDefinition names; an ignored one
            # (a filter the client relies on) would change what the answer means.
            listed = ", ".join(known)
            raise InvalidResource([Issue("not-supported", f"$match has no parameter {name!r} ({listed})", str(name))])
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
    # URL parameters combine with the body's (R4 operations.html); an unknown one, or one given twice, is 400.
    url = query_input(by_id("match"), request.query_params.multi_items())
    body = await read_json_body(request)
    patient, only_certain, count = _parameters(body)
    in_body = (
        {p.get("name") for p in body.get("parameter") or [] if isinstance(p, dict)} if "parameter" in body else set()
    )
    for name in url.values:
        if name in in_body or name == "resource":
            raise InvalidResource([Issue("invalid", f"$match takes {name} once, in the body or in the URL", name)])
    if (certain := url.first("onlyCertainMatches")) is not None:
        only_certain = certain == "true"
    if (limit := url.first("count")) is not None:
        count = parse_int(limit)
        if count is None or count < 1:
            raise InvalidResource([Issue("invalid", "count must be a positive integer", "count")])
    disclosure = Disclosure.of(request)
    body = await in_thread(match, services, base_url(request), patient, only_certain, count, disclosure)
    headers = await in_thread(disclosure.finish, services, request, "$match Patient")
    return Response(body, media_type=FHIR_JSON, headers=headers)


def pix(services: Services, source: str, targets: list[str], disclosure: Disclosure | None = None) -> bytes:
    system, bar, value = source.partition("|")
    if not bar or not system or not value:
        raise InvalidResource([Issue("invalid", "sourceIdentifier must be system|value", "sourceIdentifier")])
    identity = services.identity_current()
    with identity.database.read() as tx:
        sources = IdentityIndex.records_with_identifier(tx, system, value)
        if disclosure is not None and sources:
            # A record the caller may not read does not answer: 404, as if it did not exist.
            readable = disclosure.readable(tx, sources)
            sources = [record for record in sources if record in readable]
        if not sources:
            raise NotFound(f"no Patient has the identifier {source}")
        records: list[str] = []
        for record in sources:
            for linked in IdentityIndex.linked_records(tx, record):
                if linked not in records:
                    records.append(linked)
        if disclosure is not None:
            readable = disclosure.readable(tx, records)
            records = [record for record in records if record in readable]
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
@router.post("/Patient/$ihe-pix", summary="Patient $ihe-pix (PIXm, POST with a Parameters body)")
async def patient_pix(request: Request, services: ServicesDep) -> Response:
    given = await operation_input(request, by_id("ihe-pix"))
    source = given.first("sourceIdentifier")
    if source is None:
        raise InvalidResource([Issue("required", "sourceIdentifier (system|value) is required", "sourceIdentifier")])
    target_list = [t for value in given.all("targetSystem") for t in value.split(",") if t]
    disclosure = Disclosure.of(request)
    body = await in_thread(pix, services, source, target_list, disclosure)
    headers = await in_thread(disclosure.finish, services, request, "$ihe-pix Patient")
    return Response(body, media_type=FHIR_JSON, headers=headers)
