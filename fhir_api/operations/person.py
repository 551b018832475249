"""The master patient index over HTTP: Patients served with ``link``, the golden ``Person``, and a data
steward's confirm / undo of links.

- ``GET [base]/Patient/[id]``: the stored Patient; when the index links it to other records, the served copy
  carries ``link`` entries of type ``seealso`` to them, merged at read time (the stored bytes never change;
  a Patient linked to nothing is served byte for byte as stored).
- ``GET [base]/Person/[id]``: the golden record of a person of the index (falls back to a stored Person).
- ``GET [base]/Patient/[id]/$person``: the person holding a record.
- ``POST [base]/Patient/[id]/$link`` (Parameters ``other``: Reference to a Patient, or ``person``: id):
  confirm a link (e.g. a possible match from the review queue).
- ``POST [base]/Patient/[id]/$unlink``: undo; the record leaves its person and is never re-linked to it
  automatically. Who decided comes from the writer's context (``X-EHR-User``, ``X-EHR-Role``).
- ``GET [base]/Person/$review``: the review queue of possible matches (Parameters).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import Forbidden, InvalidResource, Issue, NotFound
from ehr_core.resources import json as fhir_json
from fhir_api.access import decide, record_break_glass
from fhir_api.auth import caller_of, viewer_of
from fhir_api.interactions import read
from fhir_api.operations.definitions import by_id
from fhir_api.operations.match import Disclosure
from fhir_api.operations.parameters import operation_input
from fhir_api.request import ServicesDep, write_context
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.access import Viewer, visible_ids
from projections.db import Tx
from projections.identity import IdentityIndex
from projections.resources import ResourceViews, StoredResource

router = APIRouter()
#: Reads of ``Patient/{id}`` and ``Person/{id}``: included after history and search, before the generic read.
read_router = APIRouter()

_ASSURANCE = {"enrolment": "level4", "curp": "level4", "manual": "level4", "fellegi-sunter": "level3"}


def linked_patient(
    tx: Tx, stored: StoredResource, others: list[str], viewer: Viewer | None = None
) -> tuple[bytes, int, str] | None:
    """The current Patient ``stored`` with ``seealso`` links to ``others`` (the other records of its person)
    merged in; None when it is linked to no other record (or deleted): then the plain read serves it, byte for
    byte as stored. With a ``viewer``, only links to records it may read: a link names another institution's
    record of the person, which ``$ihe-pix`` hides from a caller who may not read it."""
    patient_id = stored.resource_id
    if others and viewer is not None:
        readable = visible_ids(tx, viewer, "Patient", others)
        others = [other for other in others if other in readable]
    if not others:
        return None
    # ``seealso`` joins one person's records at *other* institutions (DOMAIN.md); two records of one
    # institution are a duplicate for that institution to merge, not a link to serve.
    sources = IdentityIndex.record_sources(tx, [patient_id, *others])
    own = sources.get(patient_id)
    others = [o for o in others if own is None or o not in sources or sources[o].institution != own.institution]
    if not others or stored.body is None:
        return None
    resource = fhir_json.loads(stored.body)
    links = list(resource.get("link") or [])
    present = {(link.get("other") or {}).get("reference") for link in links if isinstance(link, dict)}
    for other in others:
        if f"Patient/{other}" not in present:
            links.append({"other": {"reference": f"Patient/{other}"}, "type": "seealso"})
    resource["link"] = links
    return fhir_json.dumps(resource), stored.version, stored.last_updated


@read_router.get("/Patient/{patient_id}", summary="read Patient (with links to the same person's records)")
def read_patient(patient_id: str, request: Request, services: ServicesDep) -> Response:
    at = request.query_params.get("_at")
    identity = services.identity
    if identity.position < services.projector.position:
        identity.catch_up()  # e.g. after a transaction Bundle wrote Patients: match them before serving links
    if at is None:
        # The record and its links in one statement; the links' visibility only when there are any.
        with services.views.read() as tx:
            stored, others = IdentityIndex.record_with_links(tx, patient_id)
            served = None if stored is None else linked_patient(tx, stored, others, viewer_of(request))
        if served is None:
            found = read.current(stored, f"Patient/{patient_id}")
            assert found.body is not None  # current() refuses a deleted version
            served = found.body, found.version, found.last_updated
        body, version, last_updated = served
        return read.read_response(request, body, version, last_updated)
    return read.read("Patient", patient_id, services, at, request)


def golden_record(services: Services, person_id: str) -> dict[str, Any] | None:
    with services.views.read() as tx:
        links = IdentityIndex.links(tx, person_id)
        if not links:
            return None
        patients = []
        for link in links:
            stored = ResourceViews.read(tx, "Patient", link.record)
            if stored is not None and stored.body is not None:
                patients.append(fhir_json.loads(stored.body))
        features = IdentityIndex.features_of(tx, [link.record for link in links])
    # The best source: a record with a valid CURP, else the most recently updated.
    patients.sort(
        key=lambda p: (
            features.get(p["id"]) is not None and features[p["id"]].curp_status == "valid",
            (p.get("meta") or {}).get("lastUpdated", ""),
        ),
        reverse=True,
    )
    person: dict[str, Any] = {"resourceType": "Person", "id": person_id}
    identifiers: list[dict[str, Any]] = []
    for patient in patients:
        for identifier in patient.get("identifier") or []:
            if identifier not in identifiers:
                identifiers.append(identifier)
    if identifiers:
        person["identifier"] = identifiers
    if patients:
        best = patients[0]
        for key in ("name", "telecom", "gender", "birthDate", "address"):
            if key in best:
                person[key] = best[key]
    person["active"] = True
    person["link"] = [
        {
            "target": {"reference": f"Patient/{link.record}"},
            "assurance": _ASSURANCE.get(link.method, "level2"),
            "extension": [
                {"url": "urn:ehr-core:mpi:link-method", "valueCode": link.method},
                *([{"url": "urn:ehr-core:mpi:link-score", "valueDecimal": link.score}] if link.score else []),
                {"url": "urn:ehr-core:mpi:linked-by", "valueString": link.by},
            ],
        }
        for link in links
    ]
    return person


@router.get("/Person/$review", summary="MPI review queue (possible matches)")
@router.post("/Person/$review", summary="MPI review queue (possible matches; POST)")
async def review(request: Request, services: ServicesDep) -> Response:
    """A data steward reviews only the candidates whose record the caller may read (the rule of
    :mod:`fhir_api.operations.match`); another institution's possible matches stay in its own queue."""
    await operation_input(request, by_id("review"))  # it takes no parameter
    disclosure = Disclosure.of(request)

    def queue() -> list[tuple[str, str, float]]:
        identity = services.identity_current()
        with identity.database.read() as tx:
            items = IdentityIndex.review_queue(tx, 500)
            readable = disclosure.readable(tx, [record for record, _, _ in items])
        return [item for item in items if item[0] in readable]

    items = await in_thread(queue)
    headers = await in_thread(disclosure.finish, services, request, "$review Person")
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "candidate",
                "part": [
                    {"name": "record", "valueReference": {"reference": f"Patient/{record}"}},
                    {"name": "person", "valueReference": {"reference": f"Person/{person}"}},
                    {"name": "score", "valueDecimal": score},
                ],
            }
            for record, person, score in items
        ],
    }
    return Response(orjson.dumps(parameters), media_type=FHIR_JSON, headers=headers)


@read_router.get("/Person/{person_id}", summary="read Person (the golden record of the patient index)")
async def read_person_route(person_id: str, request: Request, services: ServicesDep) -> Response:
    return await read_person(person_id, services, request)


async def read_person(person_id: str, services: Services, request: Request | None = None) -> Response:
    await in_thread(services.identity_current)
    person = await in_thread(golden_record, services, person_id)
    if person is None:  # not a person of the index: a stored Person resource, if any
        return await in_thread(read.read, "Person", person_id, services, None, request)
    return Response(orjson.dumps(person), media_type=FHIR_JSON)


def _person_of(services: Services, patient_id: str) -> str:
    services.identity_current()
    with services.views.read() as tx:
        person = IdentityIndex.person_of(tx, patient_id)
    if person is None:
        raise NotFound(f"Patient/{patient_id} is not in the master patient index")
    return person


@router.get("/Patient/{patient_id}/$person", summary="the person (golden record) holding a Patient record")
@router.post("/Patient/{patient_id}/$person", summary="the person (golden record) holding a Patient record (POST)")
async def person_of(patient_id: str, request: Request, services: ServicesDep) -> Response:
    await operation_input(request, by_id("person"))  # it takes no parameter
    person_id = await in_thread(_person_of, services, patient_id)
    return await read_person(person_id, services)


@router.post("/Patient/{patient_id}/$link", summary="link a Patient record to a person (data steward)")
async def link(patient_id: str, request: Request, services: ServicesDep) -> Response:
    given = await operation_input(request, by_id("link"))
    context = write_context(request, "link")
    other, person = given.first("other"), given.first("person")
    if other is not None:
        if not other.startswith("Patient/"):
            raise InvalidResource([Issue("invalid", "other must be a Reference to a Patient", "other")])
        person_id = await in_thread(_person_of, services, other.split("/", 1)[1])
    elif person is not None:
        person_id = person
    else:
        raise InvalidResource([Issue("required", "give other (Reference to a Patient) or person (its id)")])
    await in_thread(_person_of, services, patient_id)
    await in_thread(_may_link, services, request, patient_id, person_id)
    linked = await in_thread(
        services.identity.mpi.link, f"Patient/{patient_id}", person_id, _who(context.user, context.role)
    )
    await in_thread(services.identity.catch_up)
    return await read_person(linked, services)


@router.post("/Patient/{patient_id}/$unlink", summary="undo the link of a Patient record (data steward)")
async def unlink(patient_id: str, request: Request, services: ServicesDep) -> Response:
    context = write_context(request, "unlink")
    await in_thread(_person_of, services, patient_id)
    # Whether the caller may change this record's identity comes first: a refused caller learns nothing of
    # what the body would have been checked for.
    await in_thread(_may_link, services, request, patient_id, None)
    await operation_input(request, by_id("unlink"))  # no parameters: an empty body or an empty Parameters
    own = await in_thread(services.identity.mpi.unlink, f"Patient/{patient_id}", _who(context.user, context.role))
    await in_thread(services.identity.catch_up)
    return await read_person(own, services)


def _may_link(services: Services, request: Request, patient_id: str, person_id: str | None) -> None:
    """A data steward links or unlinks their own institution's record (a change of that record's identity,
    refused like any write to another institution's resource), and links it only to a person whose every
    record they may read (the answer is that person's golden record, demographics of each record merged)."""
    caller = caller_of(request)
    if caller is None:
        return
    institution = str(caller.claims["institution"])
    reason = request.headers.get("x-ehr-break-glass", "").strip() or None
    with services.views.read() as tx:
        own = decide(tx, institution, target=("Patient", patient_id))
        person = decide(tx, institution, target=("Person", person_id), break_glass=reason) if person_id else None
    if own.basis not in ("own", "unknown"):
        owner = ", ".join(own.owners)
        raise Forbidden(f"Patient/{patient_id} was recorded by {owner}; only {owner} may link or unlink it")
    if person is not None and not person.permitted:
        raise Forbidden(
            f"Person/{person_id} holds records of {', '.join(person.owners)} that {institution} may not read; "
            "a link needs the patient's consent at those institutions (or break-the-glass, X-EHR-Break-Glass)"
        )
    if person is not None and person.basis == "break-the-glass" and reason is not None:
        # The answer is that person's golden record: a disclosure like any other broken glass.
        record_break_glass(services, caller.claims, reason, f"Person/{person_id} ($link)")
        request.state.ehr_break_glass = True


def _who(user: str, role: str | None) -> str:
    return f"{user} ({role})" if role else user
