"""``$validate`` (R4 resource-operation-validate): ``POST [base]/[type]/$validate``,
``POST [base]/[type]/[id]/$validate`` and ``GET [base]/[type]/[id]/$validate``.

The resource is checked exactly as a write would check it (the R4B models, the required bindings, the
error-level invariants, the identifier rules) and nothing is stored. R4 "$validate": the answer is an
OperationOutcome listing every issue, 200 whether the resource is valid or not; only a request that cannot
be read (a body that is not JSON) is refused with 400. The body is the resource itself, or a Parameters
with ``resource``, ``mode`` (create, update, delete) and ``profile``. A ``profile`` (and each profile the
resource claims in ``meta.profile``) is looked up among the stored and shipped StructureDefinitions
(projections/terminology/conformance.py): its constraints are reported like the core's, its must-support
elements the resource lacks as information (R4 profiling.html#mustsupport); a ``profile`` this server does
not know is refused, 400 not-supported.

Access: as for a read of the type (the instance forms: as for a read of that instance).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import Deleted, InvalidResource, Issue, NotFound, RecordError
from ehr_core.identity.rules import check_identifiers
from ehr_core.resources import json as fhir_json
from ehr_core.resources.validation import validate
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import query_input
from fhir_api.outcome import operation_outcome
from fhir_api.request import ServicesDep, read_json_body, require_type
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.resources import ResourceViews
from projections.terminology.conformance import claimed_profiles

__all__ = ["router"]

router = APIRouter()

_MODES = frozenset({"create", "update", "delete"})


@router.post("/{resource_type}/$validate", summary="$validate (type)")
async def validate_type(resource_type: str, request: Request, services: ServicesDep) -> Response:
    require_type(resource_type)
    return await _posted(resource_type, None, request, services)


@router.post("/{resource_type}/{resource_id}/$validate", summary="$validate (instance)")
async def validate_instance_posted(
    resource_type: str, resource_id: str, request: Request, services: ServicesDep
) -> Response:
    require_type(resource_type)
    return await _posted(resource_type, resource_id, request, services)


@router.get("/{resource_type}/{resource_id}/$validate", summary="$validate (stored instance)")
async def validate_instance(resource_type: str, resource_id: str, request: Request, services: ServicesDep) -> Response:
    """The stored current version checked against today's rules (404 when there is none, as a read)."""
    require_type(resource_type)
    given = query_input(by_id("validate"), request.query_params.multi_items())
    mode = _mode(given.first("mode"))
    profiles = given.all("profile")
    await in_thread(_check_profile, services, resource_type, profiles)
    stored = await in_thread(_stored, services, resource_type, resource_id)
    if mode == "delete":
        return _answer([])
    issues = await in_thread(_issues, services, resource_type, resource_id, stored, "update", profiles)
    return _answer(issues)


async def _posted(resource_type: str, resource_id: str | None, request: Request, services: Services) -> Response:
    body = await read_json_body(request)  # 400 when the body is not JSON at all
    given = query_input(by_id("validate"), request.query_params.multi_items())
    mode, profiles, resource = given.first("mode"), given.all("profile"), body
    if _is_parameters(body, resource_type):
        resource, body_mode, body_profiles = _parameters(body)
        mode, profiles = body_mode or mode, [*profiles, *body_profiles]
    mode = _mode(mode)
    await in_thread(_check_profile, services, resource_type, profiles)
    if mode == "delete":
        if resource_id is None:
            raise InvalidResource([Issue("required", "mode delete validates the deletion of an instance: name it")])
        await in_thread(_stored, services, resource_type, resource_id)
        return _answer([])
    if resource is None:
        raise InvalidResource([Issue("required", "$validate needs a resource (the body, or the resource parameter)")])
    issues = await in_thread(_issues, services, resource_type, resource_id, resource, mode or "create", profiles)
    return _answer(issues)


def _is_parameters(body: Any, resource_type: str) -> bool:
    """A Parameters body holds the operation's parameters, unless Parameters is the type being validated
    and it carries no ``resource`` parameter (then it is the resource itself)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        return False
    if resource_type != "Parameters":
        return True
    items = body.get("parameter")
    return isinstance(items, list) and any(isinstance(i, dict) and i.get("name") == "resource" for i in items)


def _parameters(body: dict[str, Any]) -> tuple[Any, str | None, list[str]]:
    """(resource, mode, profiles) of a Parameters body (R4 resource-operation-validate "In Parameters")."""
    resource: Any = None
    mode: str | None = None
    profiles: list[str] = []
    items = body.get("parameter") or []
    if not isinstance(items, list):
        raise InvalidResource([Issue("structure", "Parameters.parameter must be a list", "Parameters.parameter")])
    for index, item in enumerate(items):
        where = f"Parameters.parameter[{index}]"
        name = item.get("name") if isinstance(item, dict) else None
        if name == "resource" and isinstance(item, dict) and "resource" in item:
            resource = item["resource"]
        elif name == "mode" and isinstance(item, dict) and isinstance(item.get("valueCode"), str):
            mode = item["valueCode"]
        elif name == "profile" and isinstance(item, dict) and isinstance(item.get("valueUri"), str):
            profiles.append(item["valueUri"])
        else:
            message = f"$validate takes resource (a resource), mode (valueCode) and profile (valueUri), not {name!r}"
            raise InvalidResource([Issue("not-supported", message, where)])
    return resource, mode, profiles


def _mode(mode: str | None) -> str | None:
    if mode is not None and mode not in _MODES:
        raise InvalidResource([Issue("value", f"mode {mode!r} is none of create, update, delete", "mode")])
    return mode


def _check_profile(services: Services, resource_type: str, profiles: list[str]) -> None:
    """400 not-supported for a ``profile`` this server does not know (before anything is read)."""
    if profiles:
        services.profile_issues({"resourceType": resource_type}, profiles, named=True)


def _stored(services: Services, resource_type: str, resource_id: str) -> dict[str, Any]:
    """The current stored version (404 or 410 as a read answers them)."""
    with services.views.read() as tx:
        stored = ResourceViews.read(tx, resource_type, resource_id)
    if stored is None:
        raise NotFound(f"{resource_type}/{resource_id} is not known")
    if stored.body is None:
        raise Deleted(f"{resource_type}/{resource_id} was deleted (version {stored.version})", version=stored.version)
    resource: dict[str, Any] = fhir_json.loads(stored.body)
    return resource


def _issues(
    services: Services, resource_type: str, resource_id: str | None, resource: Any, mode: str, profiles: list[str]
) -> list[Issue]:
    """Every issue a write of ``resource`` in ``mode`` would meet, none stored, then those of the profiles
    named or claimed (warnings and must-support information included)."""
    issues: list[Issue] = []
    try:
        validate(resource, resource_type)
    except RecordError as error:
        issues += error.issues
    if issues:
        return issues
    body_id = resource.get("id")
    if mode == "update" and body_id is None:
        issues.append(Issue("required", "an update needs the resource's id", f"{resource_type}.id"))
    if resource_id is not None and body_id is not None and body_id != resource_id:
        message = f"id in the body ({body_id}) does not match the id in the URL ({resource_id})"
        issues.append(Issue("invalid", message, f"{resource_type}.id"))
    wanted = [*profiles, *(p for p in claimed_profiles(resource) if p not in profiles)]
    issues += services.profile_issues(resource, wanted)
    try:
        check_identifiers(resource)
    except RecordError as error:
        issues += error.issues
    return issues


def _answer(issues: list[Issue]) -> Response:
    if not issues:
        issues = [Issue("informational", "no issues: the resource is valid", severity="information")]
    return Response(operation_outcome(issues), status_code=200, media_type=FHIR_JSON)
