"""``$export`` (FHIR Bulk Data Access IG 2.0): kick-off, status, files, cancel.

GET [base]/$export, [base]/Patient/$export, [base]/Group/[id]/$export   (Prefer: respond-async) → 202
GET [base]/$export-status/[job]      → 202 + X-Progress while running, 200 + manifest when complete
DELETE [base]/$export-status/[job]   → 202, the job is cancelled and its files deleted
GET [base]/$export-file/[job]/[file] → the NDJSON file

Access (with auth on): the export holds what the caller's institution may see (see
:mod:`fhir_api.operations.export_jobs`); a Group export needs the Group itself to be readable by the caller
(403 otherwise, as a read would answer). ``X-EHR-Break-Glass: <reason>`` lifts the institution rule for the
job: the grant is flagged (``X-EHR-Break-Glass: granted``), listed for review and audited with purpose
``BTG``. A job's status and files answer 404 to every other institution, as if the job did not exist.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from ehr_core.errors import Deleted, InvalidResource, Issue, NotFound
from fhir_api.access import decide, record_break_glass
from fhir_api.auth import caller_of
from fhir_api.errors import ApiError
from fhir_api.interactions.history import parse_since
from fhir_api.operations.definitions import by_id
from fhir_api.operations.export_jobs import ExportJobs, ExportRequest
from fhir_api.operations.parameters import OperationInput, operation_input
from fhir_api.operations.type_filter import parse_type_filters
from fhir_api.request import ServicesDep, base_url, require_type
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.resources import ResourceViews

router = APIRouter()

NDJSON_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
# The kick-off parameters this server applies are those of its OperationDefinitions
# (fhir_api/operations/definitions.py); any other (``_elements``, ``includeAssociatedData``…) is refused: a
# server that cannot apply a filter must not export everything as if it had (Bulk Data IG 2.0 "Query
# Parameters"). ``_typeFilter`` is applied (fhir_api/operations/type_filter.py).


def _jobs(request: Request) -> ExportJobs:
    jobs: ExportJobs = request.app.state.exports
    return jobs


def _kick_off(
    request: Request,
    level: str,
    given: OperationInput,
    patients: list[str] | None = None,
) -> Response:
    if "respond-async" not in request.headers.get("prefer", ""):
        raise InvalidResource([Issue("invalid", "$export needs the header Prefer: respond-async")])
    output_format = given.first("_outputFormat")
    if output_format is not None and output_format not in NDJSON_FORMATS:
        raise InvalidResource([Issue("not-supported", f"_outputFormat {output_format} is not supported; use ndjson")])
    type_list = [t.strip() for value in given.all("_type") for t in value.split(",") if t.strip()] or None
    for resource_type in type_list or []:
        require_type(resource_type)
    named = given.all("patient")
    if named:
        if not given.posted:
            # Bulk Data IG 2.0 "patient": a POST-only parameter (a list of references does not fit a URL).
            raise InvalidResource([Issue("not-supported", "the patient parameter is taken by POST only", "patient")])
        chosen = []
        for reference in named:
            kind, _, rid = reference.partition("/")
            if kind != "Patient" or not rid or "/" in rid:
                raise InvalidResource(
                    [Issue("invalid", f"patient must reference a Patient, got {reference!r}", "patient")]
                )
            chosen.append(rid)
        patients = chosen if patients is None else [p for p in patients if p in chosen]
    caller = caller_of(request)
    reason = _break_glass(request)
    viewer = caller.viewer(break_glass=reason is not None) if caller is not None else None
    if viewer is not None:
        request.state.ehr_access = "break-the-glass" if viewer.break_glass else "filtered"  # for the audit entry
    services: Services = request.app.state.services
    with services.views.read() as tx:
        type_filters = parse_type_filters(given.all("_typeFilter"), type_list, tx, viewer, services.views.dialect)
    since = parse_since(given.first("_since"))
    export = ExportRequest(level, str(request.url), type_list, since, patients, viewer, type_filters)
    job = _jobs(request).start(export, _requester(request))
    headers = {"Content-Location": f"{base_url(request)}/$export-status/{job.id}"}
    if caller is not None and reason is not None:
        record_break_glass(request.app.state.services, caller.claims, reason, f"$export {level}")
        request.state.ehr_break_glass = True
        headers["X-EHR-Break-Glass"] = "granted"
    return Response(status_code=202, headers=headers)


def _break_glass(request: Request) -> str | None:
    return request.headers.get("x-ehr-break-glass", "").strip() or None


def _requester(request: Request) -> str | None:
    """Who asks, as an export job remembers its owner (None: auth is off)."""
    caller = caller_of(request)
    if caller is None:
        return None
    claims = caller.claims
    user = claims.get("user") or claims.get("sub") or ""
    return f"{claims['institution']}|{user}|{claims.get('patient') or ''}"


@router.get("/$export", summary="$export (system)")
@router.post("/$export", summary="$export (system, POST kick-off with a Parameters body)")
async def export_system(request: Request) -> Response:
    given = await operation_input(request, by_id("export"))
    return await in_thread(_kick_off, request, "system", given)


@router.get("/Patient/$export", summary="$export (patient)")
@router.post("/Patient/$export", summary="$export (patient, POST kick-off with a Parameters body)")
async def export_patients(request: Request) -> Response:
    given = await operation_input(request, by_id("patient-export"))
    return await in_thread(_kick_off, request, "patient", given)


@router.get("/Group/{group_id}/$export", summary="$export (group)")
@router.post("/Group/{group_id}/$export", summary="$export (group, POST kick-off with a Parameters body)")
async def export_group(group_id: str, request: Request, services: ServicesDep) -> Response:
    given = await operation_input(request, by_id("group-export"))
    return await in_thread(_export_group, group_id, request, services, given)


def _export_group(group_id: str, request: Request, services: Services, given: OperationInput) -> Response:
    caller = caller_of(request)
    with services.views.read() as tx:
        group = ResourceViews.read(tx, "Group", group_id)
        if caller is not None and group is not None:
            # The member list is itself a record: the Group must be readable by the caller, as for a read.
            institution = str(caller.claims["institution"])
            if not decide(tx, institution, target=("Group", group_id), break_glass=_break_glass(request)).permitted:
                raise ApiError(
                    "forbidden",
                    f"Group/{group_id} was recorded by another institution; {institution} may export it only with "
                    "its members' active Consent or break-the-glass (X-EHR-Break-Glass: reason)",
                    code="forbidden",
                )
    if group is None:
        raise NotFound(f"Group/{group_id} is not known")
    if group.body is None:
        raise Deleted(f"Group/{group_id} was deleted")
    members = orjson.loads(group.body).get("member", [])
    patients = [
        ref.split("/", 1)[1]
        for member in members
        if isinstance(ref := member.get("entity", {}).get("reference"), str) and ref.startswith("Patient/")
    ]
    return _kick_off(request, "group", given, patients)


@router.get("/$export-status/{job_id}", summary="$export status")
def export_status(job_id: str, request: Request) -> Response:
    job = _jobs(request).get(job_id)
    if job is None or not job.allowed(_requester(request)):
        raise NotFound(f"no export job {job_id}")
    if not job.done:
        return Response(status_code=202, headers={"X-Progress": f"{job.exported} resources", "Retry-After": "1"})
    if job.error is not None:
        raise InvalidResource([Issue("exception", job.error)])
    manifest = job.manifest(f"{base_url(request)}/$export-file")
    return Response(orjson.dumps(manifest), media_type="application/json")


@router.delete("/$export-status/{job_id}", summary="$export cancel")
def export_cancel(job_id: str, request: Request) -> Response:
    job = _jobs(request).get(job_id)
    if job is None or not job.allowed(_requester(request)) or not _jobs(request).cancel(job_id):
        raise NotFound(f"no export job {job_id}")
    return Response(status_code=202)


@router.get("/$export-file/{job_id}/{name}", summary="$export file")
def export_file(job_id: str, name: str, request: Request) -> Response:
    job = _jobs(request).get(job_id)
    if job is not None and not job.allowed(_requester(request)):
        job = None
    path = job.directory / name if job is not None else None
    if job is None or path is None or "/" in name or not name.endswith(".ndjson") or not path.is_file():
        raise NotFound(f"no export file {job_id}/{name}")
    return FileResponse(path, media_type="application/fhir+ndjson")
