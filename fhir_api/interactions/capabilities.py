"""capabilities: ``GET [base]/metadata`` (R4 §3.1.0.10): exactly what this server does, nothing more.

Built from what is registered, so it cannot drift: the search parameters of each type from the search
registry (AuditEvent and Provenance are searched over the server's own logs, with the parameters
:mod:`fhir_api.interactions.audit_resources` takes), the includes from its reference parameters, the
operations from :mod:`fhir_api.operations.definitions` (each definition readable at
``OperationDefinition/[id]``, served here too).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.resources.types import supported_types
from fhir_api.interactions import read
from fhir_api.operations.definitions import OPERATIONS, definition_resource, definition_url, operations_for
from fhir_api.request import ServicesDep, base_url
from fhir_api.responses import FHIR_JSON
from projections.search import capability_search_params, capability_system_search_params
from projections.search.definitions import TARGETS
from projections.search.registry import declared
from projections.subscriptions import BACKPORT, TOPICS

router = APIRouter()

TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SYSTEM_INTERACTIONS = ("transaction", "batch", "search-system", "history-system")
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
PATIENT_COMPARTMENT = "http://hl7.org/fhir/CompartmentDefinition/patient"
#: Searched over the server's own logs (fhir_api/interactions/audit_resources.py), with these parameters only.
LOG_SEARCH_PARAMETERS = {
    "AuditEvent": frozenset({"patient", "entity", "agent", "date", "action", "outcome", "subtype", "address"}),
    "Provenance": frozenset({"target", "patient", "agent", "recorded"}),
}


def _search_params(resource_type: str) -> list[dict[str, Any]]:
    found = capability_search_params(resource_type)
    if resource_type in LOG_SEARCH_PARAMETERS:
        return [p for p in found if p["name"] in LOG_SEARCH_PARAMETERS[resource_type]]
    return found


@cache
def _includes() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``searchInclude`` and ``searchRevInclude`` per type: ``Source:param`` for each reference parameter
    (R4 §3.1.1.5.4), a revinclude under every type the parameter may point to.

    Read from the generated tables, not the compiled registry: compiling needs the R4B model of every type,
    tens of MiB that a server answering ``/metadata`` would then keep for its whole life."""
    includes: dict[str, list[str]] = {}
    revincludes: dict[str, list[str]] = {}
    types = supported_types()
    for source in types:
        if source in LOG_SEARCH_PARAMETERS:  # their searches take no _include, and they are not indexed
            continue
        for code, kind in sorted(declared(source).items()):
            if kind != "reference":
                continue
            includes.setdefault(source, []).append(f"{source}:{code}")
            found = TARGETS.get((source, code), ())
            targets = types if "Resource" in found or not found else found
            for target in targets:
                if target not in LOG_SEARCH_PARAMETERS:  # their searches take no _revinclude either
                    revincludes.setdefault(target, []).append(f"{source}:{code}")
    return includes, revincludes


def _operations(base: str, resource_type: str | None) -> list[dict[str, Any]]:
    return [{"name": op.code, "definition": definition_url(base, op)} for op in operations_for(resource_type)]


@cache
def _resources(base: str) -> list[dict[str, Any]]:
    includes, revincludes = _includes()
    resources = []
    for resource_type in supported_types():
        resource: dict[str, Any] = {
            "type": resource_type,
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
        }
        if includes.get(resource_type):
            resource["searchInclude"] = ["*", *includes[resource_type]]
        if revincludes.get(resource_type):
            resource["searchRevInclude"] = sorted(set(revincludes[resource_type]))
        resource["searchParam"] = _search_params(resource_type)
        operations = _operations(base, resource_type)
        if operations:
            resource["operation"] = operations
        if resource_type == "Subscription":
            resource.update(_subscription_support())
        resources.append(resource)
    return resources


def _oauth_uris(base: str) -> dict[str, Any]:
    """SMART App Launch 2.x §Conformance: the ``oauth-uris`` extension naming the authorization server's
    endpoints (``/oauth`` beside ``/fhir``), for clients that read the CapabilityStatement."""
    root = base.removesuffix("/fhir")
    return {
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
        "extension": [
            {"url": name, "valueUri": f"{root}/oauth/{path}"}
            for name, path in (
                ("authorize", "authorize"),
                ("token", "token"),
                ("introspect", "introspect"),
                ("revoke", "revoke"),
            )
        ],
    }


def _subscription_support() -> dict[str, Any]:
    """Subscriptions R5 Backport IG for R4 1.1.0 (CapabilityStatement "backport-subscription-server-r4"): the
    backport Subscription profile, and each SubscriptionTopic this server ships by its canonical URL."""
    return {
        "supportedProfile": [f"{BACKPORT}/StructureDefinition/backport-subscription"],
        "extension": [
            {
                "url": f"{BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical",
                "valueCanonical": url,
            }
            for url in TOPICS
        ],
    }


def _security(auth_disabled: bool, base: str | None = None, cors: bool = True) -> dict[str, Any]:
    """``rest.security`` (R4 capabilitystatement.html, SMART App Launch "Conformance"): bearer JWTs with
    SMART scopes; the issuers and endpoints are in ``.well-known/smart-configuration``."""
    if auth_disabled:
        return {
            "cors": cors,
            "description": "Authentication is disabled (EHR_AUTH=disabled-for-development): development only.",
        }
    return {
        **({"extension": [_oauth_uris(base)]} if base is not None else {}),
        "cors": cors,  # browser apps on their own origin may call the API (fhir_api/app.py, EHR_CORS_ORIGINS)
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ]
            }
        ],
        "description": "Bearer JWTs from this server's authorization server (/oauth) or trusted institution "
        "issuers, with SMART v1/v2 scopes; see .well-known/smart-configuration",
    }


def capability_statement(base: str, auth_disabled: bool = False, cors: bool = True) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "ehr-core",
        "kind": "instance",
        "software": {"name": "ehr-core", "version": "0.1.0"},
        "implementation": {"description": "Event-sourced health record core", "url": base},
        "instantiates": [f"{BACKPORT}/CapabilityStatement/backport-subscription-server-r4"],
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json", "application/fhir+xml", "xml"],
        "rest": [
            {
                "mode": "server",
                "security": _security(auth_disabled, base, cors),
                "resource": _resources(base),
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "searchParam": capability_system_search_params(),
                "operation": _operations(base, None),
                "compartment": [PATIENT_COMPARTMENT],
            }
        ],
    }


@router.get("/metadata", summary="capabilities")
def capabilities(request: Request, services: ServicesDep) -> Response:
    settings = services.settings
    statement = capability_statement(base_url(request), settings.auth_disabled, bool(settings.cors_origins.strip()))
    return Response(orjson.dumps(statement), media_type=FHIR_JSON)


@router.get("/OperationDefinition/{definition_id}", summary="read OperationDefinition (the server's operations)")
def operation_definition(definition_id: str, request: Request, services: ServicesDep) -> Response:
    """The definition of one of the server's operations; any other id is a stored OperationDefinition."""
    operation = next((op for op in OPERATIONS if op.id == definition_id), None)
    if operation is None:
        return read.read("OperationDefinition", definition_id, services, request.query_params.get("_at"), request)
    return Response(orjson.dumps(definition_resource(base_url(request), operation)), media_type=FHIR_JSON)
