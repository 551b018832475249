"""capabilities: ``GET [base]/metadata`` (R4 §3.1.0.10): exactly what this server does, nothing more."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.resources.types import supported_types
from fhir_api.request import base_url
from fhir_api.responses import FHIR_JSON
from projections.search import capability_search_params

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
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system")
# Bulk Data Access IG 2.0 operations.
EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
PATIENT_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
GROUP_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"


@cache
def _resources() -> list[dict[str, Any]]:
    return [
        {
            "type": resource_type,
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            **_type_operations(resource_type),
            "searchParam": capability_search_params(resource_type),
        }
        for resource_type in supported_types()
    ]


def _type_operations(resource_type: str) -> dict[str, Any]:
    if resource_type == "Patient":
        return {"operation": [{"name": "export", "definition": PATIENT_EXPORT}]}
    if resource_type == "Group":
        return {"operation": [{"name": "export", "definition": GROUP_EXPORT}]}
    return {}


def capability_statement(base: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "ehr-core",
        "kind": "instance",
        "software": {"name": "ehr-core", "version": "0.1.0"},
        "implementation": {"description": "Event-sourced health record core", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "resource": _resources(),
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "operation": [{"name": "export", "definition": EXPORT}],
            }
        ],
    }


@router.get("/metadata", summary="capabilities")
def capabilities(request: Request) -> Response:
    return Response(orjson.dumps(capability_statement(base_url(request))), media_type=FHIR_JSON)
