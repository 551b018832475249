"""``$import``: bulk import of NDJSON over HTTP (the Bulk Data import drafts, as HAPI FHIR's ``$import``).

POST [base]/$import   (a Parameters body)          → 202 + Content-Location: [base]/$import-status/[job]
GET [base]/$import-status/[job]     → 202 + X-Progress while running, 200 + Parameters (the result) when done
DELETE [base]/$import-status/[job]  → 202: the job stops after the chunk it is saving

The body::

    {"resourceType": "Parameters", "parameter": [
      {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
      {"name": "input", "part": [{"name": "type", "valueCode": "Patient"},
                                 {"name": "url", "valueUri": "file:///srv/ehr/import/Patient.ndjson"}]}]}

Sources: the server reads only ``file://`` URLs of ``.ndjson`` files inside its import directory
(``EHR_IMPORT_DIR``, by default ``DATA_DIR/import``), after resolving symbolic links and ``..``: a URL
outside it is 403, whether or not the file exists; other schemes (``http``, ``https``, ``s3``...) are 400,
never fetched (an import that fetched any URL would let a caller make the server request internal
addresses). A file that is not there is 400. The operator places files there; a client names them.

Who writes: the caller, as for any write: the institution, unit and user of its token (with auth disabled,
the ``X-EHR-*`` headers), held to the write policy line by line (another institution's resource is a
rejected line, not a failed job), conditional references matching only what the caller may read. The
request needs create and update scopes on every type (``user/*.cu``; an NDJSON file may hold any type). A
job's status answers only the requester that started it (404 to anyone else, as for ``$export``).

Each ``input``'s ``type`` must be a resource type this server stores; its lines are read as they are (each
line its own ``resourceType``, kept under its own id, as ``ehr import`` does), in dependency order
(``ehr_core.importing``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import Forbidden, InvalidResource, Issue, NotFound
from ehr_core.resources.types import is_supported
from fhir_api.auth import caller_of, viewer_of
from fhir_api.operations.definitions import by_id
from fhir_api.operations.import_jobs import ImportInput, ImportJobs, ImportRequest
from fhir_api.request import ServicesDep, base_url, read_json_body, write_context
from fhir_api.responses import FHIR_JSON
from fhir_api.threads import in_thread

__all__ = ["router"]

router = APIRouter()

NDJSON_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
_GENERAL = frozenset({"_format", "_pretty"})


def _jobs(request: Request) -> ImportJobs:
    jobs: ImportJobs = request.app.state.imports
    return jobs


def _requester(request: Request) -> str | None:
    """Who asks, as a job remembers its owner (None: auth is off)."""
    caller = caller_of(request)
    if caller is None:
        return None
    claims = caller.claims
    return f"{claims['institution']}|{claims.get('user') or claims.get('sub') or ''}|{claims.get('patient') or ''}"


def _invalid(message: str, where: str | None = None, code: str = "invalid") -> InvalidResource:
    return InvalidResource([Issue(code, message, where)])


def _value(item: dict[str, Any], where: str, keys: tuple[str, ...]) -> str:
    values = [(key, value) for key, value in item.items() if key.startswith("value")]
    if len(values) != 1 or values[0][0] not in keys or not isinstance(values[0][1], str) or not values[0][1]:
        raise _invalid(f"{item.get('name')} needs one of {', '.join(keys)}", where)
    return str(values[0][1])


def local_file(url: str, root: Path, where: str) -> Path:
    """The ``.ndjson`` file a ``file://`` URL names inside ``root``; 400 for another scheme, a malformed URL
    or a missing file, 403 outside ``root`` (decided before looking whether the file exists)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        scheme = parts.scheme or "a relative URL"
        raise _invalid(
            f"{url[:200]}: only file:// URLs in the server's import directory (EHR_IMPORT_DIR) are read; "
            f"{scheme} sources are never fetched",
            where,
            "not-supported",
        )
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise _invalid(f"{url[:200]}: a file:// URL names a local path (file:///dir/file.ndjson)", where)
    path = Path(unquote(parts.path))
    if not path.is_absolute() or "\x00" in parts.path:
        raise _invalid(f"{url[:200]}: a file:// URL needs an absolute path", where)
    try:
        resolved, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError):  # a symlink loop, a name too long: it names no file of the directory
        raise _invalid(f"{url[:200]}: not a readable path", where) from None
    if not resolved.is_relative_to(base) or resolved == base:
        raise Forbidden(
            [Issue("forbidden", f"{url[:200]} is outside the server's import directory (EHR_IMPORT_DIR)", where)]
        )
    if resolved.suffix != ".ndjson":
        raise _invalid(f"{url[:200]}: $import reads NDJSON files (.ndjson)", where)
    try:
        present = resolved.is_file()
    except OSError:  # a name too long for the file system, say: no such file either
        present = False
    if not present:
        raise _invalid(f"{url[:200]}: no such file in the import directory", where, "not-found")
    return resolved


def _inputs(body: Any, root: Path) -> tuple[list[ImportInput], str | None]:
    """The ``input`` files and the ``inputSource`` of a Parameters body (400 for anything malformed)."""
    operation = by_id("import")
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise _invalid("$import takes a Parameters resource as its body")
    items = body.get("parameter")
    if not isinstance(items, list) or not items:
        raise _invalid("$import needs parameters inputFormat and input", "Parameters.parameter", "required")
    formats: list[str] = []
    sources: list[str] = []
    inputs: list[ImportInput] = []
    for index, item in enumerate(items):
        where = f"Parameters.parameter[{index}]"
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise _invalid("each parameter needs a name", where, "required")
        assert isinstance(item, dict)
        if name not in operation.in_parameters:
            known = ", ".join(operation.in_parameters)
            raise _invalid(f"$import has no parameter {name!r} (its parameters: {known})", where, "not-supported")
        if name == "inputFormat":
            formats.append(_value(item, where, ("valueCode", "valueString")))
        elif name == "inputSource":
            sources.append(_value(item, where, ("valueUri", "valueUrl", "valueString")))
        else:
            inputs.append(_input(item, where, root))
    if len(formats) != 1 or len(sources) > 1:
        raise _invalid("$import takes inputFormat exactly once and inputSource at most once", "Parameters.parameter")
    if formats[0] not in NDJSON_FORMATS:
        raise _invalid(f"inputFormat {formats[0]} is not supported; use application/fhir+ndjson", None, "not-supported")
    if not inputs:
        raise _invalid("$import needs at least one input (type and url)", "Parameters.parameter", "required")
    return inputs, sources[0] if sources else None


def _input(item: dict[str, Any], where: str, root: Path) -> ImportInput:
    parts = item.get("part")
    if not isinstance(parts, list) or any(key.startswith(("value", "resource")) for key in item):
        raise _invalid("input is made of parts: type and url", where)
    found: dict[str, str] = {}
    for number, part in enumerate(parts):
        at = f"{where}.part[{number}]"
        name = part.get("name") if isinstance(part, dict) else None
        if name not in ("type", "url") or name in found:
            raise _invalid("input takes the parts type and url, once each", at)
        assert isinstance(part, dict)
        found[name] = _value(part, at, ("valueCode", "valueString") if name == "type" else ("valueUri", "valueUrl"))
    if set(found) != {"type", "url"}:
        raise _invalid("input needs both parts: type and url", where, "required")
    if not is_supported(found["type"]):
        raise _invalid(f"input type {found['type'][:100]!r} is not a resource type this server stores", where)
    return ImportInput(found["type"], found["url"], local_file(found["url"], root, where))


@router.post("/$import", summary="$import (bulk NDJSON import from the server's import directory)")
async def kick_off(request: Request, services: ServicesDep) -> Response:
    unknown = [name for name in request.query_params if name not in _GENERAL]
    if unknown:
        raise _invalid(f"$import takes its parameters in the Parameters body, not {unknown[0]!r} in the URL", None)
    body = await read_json_body(request)
    root = services.settings.import_root
    inputs, source = await in_thread(_inputs, body, root)
    import_request = ImportRequest(
        str(request.url), tuple(inputs), write_context(request, "import"), viewer_of(request), source
    )
    job = await in_thread(_jobs(request).start, import_request, _requester(request))
    return Response(status_code=202, headers={"Content-Location": f"{base_url(request)}/$import-status/{job.id}"})


@router.get("/$import-status/{job_id}", summary="$import status")
def status(job_id: str, request: Request) -> Response:
    job = _jobs(request).get(job_id)
    if job is None or not job.allowed(_requester(request)):
        raise NotFound(f"no import job {job_id}")
    if not job.done:
        return Response(status_code=202, headers={"X-Progress": job.progress(), "Retry-After": "1"})
    if job.error is not None:
        raise InvalidResource([Issue("exception", job.error)])
    return Response(orjson.dumps(job.result()), media_type=FHIR_JSON)


@router.delete("/$import-status/{job_id}", summary="$import cancel")
def cancel(job_id: str, request: Request) -> Response:
    job = _jobs(request).get(job_id)
    if job is None or not job.allowed(_requester(request)) or not _jobs(request).cancel(job_id):
        raise NotFound(f"no import job {job_id}")
    return Response(status_code=202)
