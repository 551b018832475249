"""The CapabilityStatement's search parameters cite R4's own definitions (R4 capabilitystatement-definitions.html
#CapabilityStatement.rest.resource.searchParam.definition: "SHALL be populated if the search parameter refers to
a SearchParameter defined by the FHIR core specification").

Checked against ``search-parameters.json`` of the R4 definitions, read here and not through the generated
registry: each listed parameter of each type has the type and the url of the SearchParameter whose ``base``
holds that type (or ``Resource``/``DomainResource``) and whose ``code`` is its name — a shared definition
such as ``clinical-patient`` by its own url —, every parameter of the registry is listed, and the parameters
for all resources (``rest.searchParam``) include the special ones the server implements.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from fastapi.testclient import TestClient

from ehr_core.resources.types import supported_types
from projections.search.registry import declared
from tests.conftest import CORPUS

#: Searched over the server's own logs, with a subset of their parameters (fhir_api/interactions/capabilities.py).
LOG_TYPES = frozenset({"AuditEvent", "Provenance"})
ALL_RESOURCES = ("Resource", "DomainResource")


@cache
def spec_parameters() -> dict[tuple[str, str], dict[str, Any]]:
    """(base, code) → the SearchParameter, from the R4 definitions."""
    bundle = json.loads((CORPUS / "spec" / "r4" / "search-parameters.json").read_text())
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        for base in resource.get("base", []):
            found.setdefault((base, resource["code"]), resource)
    return found


def _definition(resource_type: str, code: str) -> dict[str, Any] | None:
    spec = spec_parameters()
    for base in (resource_type, *ALL_RESOURCES):
        if (base, code) in spec:
            return spec[(base, code)]
    return None


def test_every_type_lists_every_registry_parameter_with_its_r4_definition(client: TestClient) -> None:
    rest = client.get("/fhir/metadata").json()["rest"][0]
    by_type = {resource["type"]: resource for resource in rest["resource"]}
    wrong = []
    for resource_type in supported_types():
        listed = {param["name"]: param for param in by_type[resource_type]["searchParam"]}
        if resource_type not in LOG_TYPES:
            assert set(listed) == set(declared(resource_type)), resource_type
        for code, param in listed.items():
            definition = _definition(resource_type, code)
            assert definition is not None, f"{resource_type}.{code} has no R4 definition"
            if (param.get("definition"), param["type"]) != (definition["url"], definition["type"]):
                wrong.append((resource_type, code, param.get("definition"), definition["url"]))
    assert not wrong, f"{len(wrong)} parameters cite the wrong definition, e.g. {wrong[:5]}"


def test_parameters_for_all_resources_are_listed_at_the_rest_level(client: TestClient) -> None:
    rest = client.get("/fhir/metadata").json()["rest"][0]
    listed = {param["name"]: param for param in rest["searchParam"]}
    assert {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"} <= set(listed)
    assert {"_text", "_content", "_list", "_filter", "_has"} <= set(listed)
    for code, param in listed.items():
        definition = _definition("Resource", code)
        if definition is None:  # defined in prose only (search.html#list, search_filter.html...)
            assert param["type"] == "special" and "definition" not in param and param["documentation"], code
        else:
            assert (param["definition"], param["type"]) == (definition["url"], definition["type"]), code
    # Each is understood by a search (a 400 would say the statement promises what the server refuses).
    assert client.get("/fhir", params={"_type": "Patient"}).status_code == 200
    for query in (
        {"_text": "dolor"},
        {"_content": "dolor"},
        {"_filter": 'name co "gom"'},
        {"_has:Observation:patient:code": "1"},
    ):
        response = client.get("/fhir/Patient", params=query)
        assert response.status_code == 200, (query, response.text)
