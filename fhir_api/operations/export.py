"""``$export`` (FHIR Bulk Data Access IG 2.0): kick-off, status, files, cancel.

GET [base]/$export, [base]/Patient/$export, [base]/Group/[id]/$export   (Prefer: respond-async) → 202
GET [base]/$export-status/[job]      → 202 + X-Progress while running, 200 + manifest when complete
DELETE [base]/$export-status/[job]   → 202, the job is cancelled and its files deleted
GET [base]/$export-file/[job]/[file] → the NDJSON file
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response

from ehr_core.errors import Deleted, InvalidResource, Issue, NotFound
from fhir_api.interactions.history import parse_since
from fhir_api.operations.export_jobs import ExportJobs, ExportRequest
from fhir_api.request import ServicesDep, base_url, require_type
from projections.resources import ResourceViews

router = APIRouter()

NDJSON_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
TypeParam = Annotated[str | None, Query(alias="_type")]
SinceParam = Annotated[str | None, Query(alias="_since")]
FormatParam = Annotated[str | None, Query(alias="_outputFormat")]


def _jobs(request: Request) -> ExportJobs:
    jobs: ExportJobs = request.app.state.exports
    return jobs


def _kick_off(
    request: Request,
    level: str,
    types: str | None,
    since: str | None,
    output_format: str | None,
    patients: list[str] | None = None,
) -> Response:
    if "respond-async" not in request.headers.get("prefer", ""):
        raise InvalidResource([Issue("invalid", "$export needs the header Prefer: respond-async")])
    if output_format is not None and output_format not in NDJSON_FORMATS:
        raise InvalidResource([Issue("not-supported", f"_outputFormat {output_format} is not supported; use ndjson")])
    type_list = [t.strip() for t in types.split(",") if t.strip()] if types else None
    for resource_type in type_list or []:
        require_type(resource_type)
    job = _jobs(request).start(ExportRequest(level, str(request.url), type_list, parse_since(since), patients))
    status_url = f"{base_url(request)}/$export-status/{job.id}"
    return Response(status_code=202, headers={"Content-Location": status_url})


@router.get("/$export", summary="$export (system)")
def export_system(
    request: Request, types: TypeParam = None, since: SinceParam = None, output_format: FormatParam = None
) -> Response:
    return _kick_off(request, "system", types, since, output_format)


@router.get("/Patient/$export", summary="$export (patient)")
def export_patients(
    request: Request, types: TypeParam = None, since: SinceParam = None, output_format: FormatParam = None
) -> Response:
    return _kick_off(request, "patient", types, since, output_format)


@router.get("/Group/{group_id}/$export", summary="$export (group)")
def export_group(
    group_id: str,
    request: Request,
    services: ServicesDep,
    types: TypeParam = None,
    since: SinceParam = None,
    output_format: FormatParam = None,
) -> Response:
    with services.views.read() as tx:
        group = ResourceViews.read(tx, "Group", group_id)
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
    return _kick_off(request, "group", types, since, output_format, patients)


@router.get("/$export-status/{job_id}", summary="$export status")
def export_status(job_id: str, request: Request) -> Response:
    job = _jobs(request).get(job_id)
    if job is None:
        raise NotFound(f"no export job {job_id}")
    if not job.done:
        return Response(status_code=202, headers={"X-Progress": f"{job.exported} resources", "Retry-After": "1"})
    if job.error is not None:
        raise InvalidResource([Issue("exception", job.error)])
    manifest = job.manifest(f"{base_url(request)}/$export-file")
    return Response(orjson.dumps(manifest), media_type="application/json")


@router.delete("/$export-status/{job_id}", summary="$export cancel")
def export_cancel(job_id: str, request: Request) -> Response:
    if not _jobs(request).cancel(job_id):
        raise NotFound(f"no export job {job_id}")
    return Response(status_code=202)


@router.get("/$export-file/{job_id}/{name}", summary="$export file")
def export_file(job_id: str, name: str, request: Request) -> Response:
    job = _jobs(request).get(job_id)
    path = job.directory / name if job is not None else None
    if job is None or path is None or "/" in name or not name.endswith(".ndjson") or not path.is_file():
        raise NotFound(f"no export file {job_id}/{name}")
    return FileResponse(path, media_type="application/fhir+ndjson")
