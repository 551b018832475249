"""The CapabilityStatement and the server agree, both ways, on every backend (R4 §3.1.0.10 "capabilities":
it describes the server's actual behaviour).

- What it lists answers: every interaction of every type, with the answer R4 gives it (not a 404, 405 or
  501); the conditional interactions it claims; every search parameter of every type; every include and
  revinclude of a sample of types (tests/integration/test_capability_operations.py calls each operation).
- What the server answers is listed: each FHIR route of the application is accounted for by the statement
  (an interaction, an operation at its level, the compartment, the security service); every supported type,
  every parameter of the search registry, every reference parameter as an include, and every operation of
  fhir_api/operations/definitions.py, at the levels its OperationDefinition names.

The instances come from the official HL7 examples (one per type that the server accepts, with an id of our
own) and, for the conformance types the corpus has no example of, from the smallest valid body.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

from ehr_core.resources.types import supported_types
from ehr_core.settings import Settings
from fhir_api.operations.definitions import OPERATIONS
from projections.search.registry import declared, parameters
from tests.conftest import CORPUS
from tests.support.access import staff_headers

EXAMPLES = CORPUS / "hl7-examples" / "r4-examples"
ID = "cap-1"
JSON_PATCH = {"content-type": "application/json-patch+json"}
#: Types with no example in the corpus the server accepts: the smallest body it takes.
SMALLEST: dict[str, dict[str, Any]] = {
    "CodeSystem": {"status": "draft", "content": "not-present"},
    "CompartmentDefinition": {"url": "urn:x:cd", "name": "x", "status": "draft", "code": "Patient", "search": True},
    "ConceptMap": {"status": "draft"},
    "Evidence": {"status": "draft", "variableDefinition": [{"variableRole": {"text": "population"}}]},
    "ImplementationGuide": {"url": "urn:x:ig", "name": "x", "status": "draft", "packageId": "x.y",
                            "fhirVersion": ["4.0.1"]},
    "NamingSystem": {"name": "x", "status": "draft", "kind": "identifier", "date": "2020-01-01",
                     "uniqueId": [{"type": "uri", "value": "urn:x:ns"}]},
    "OperationDefinition": {"name": "x", "status": "draft", "kind": "operation", "code": "x", "system": True,
                            "type": False, "instance": False},
    "SearchParameter": {"url": "urn:x:sp", "name": "x", "status": "draft", "description": "x", "code": "x",
                        "base": ["Patient"], "type": "token"},
    "StructureDefinition": {"url": "urn:x:sd", "name": "x", "status": "draft", "kind": "resource",
                            "abstract": False, "type": "Patient",
                            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",  # sdf-4
                            "derivation": "constraint",
                            "differential": {"element": [{"id": "Patient", "path": "Patient"}]}},  # sdf-6
    "StructureMap": {"url": "urn:x:sm", "name": "x", "status": "draft", "group": [{
        "name": "x", "typeMode": "none", "input": [{"name": "x", "mode": "source"}],
        "rule": [{"name": "x", "source": [{"context": "x"}]}]}]},
    "ValueSet": {"status": "draft"},
}  # fmt: skip
#: A value each search type takes (the answer may well be empty: the parameter must be understood).
VALUES = {
    "string": "x",
    "token": "x",
    "reference": "x",
    "date": "2020-01-01",
    "uri": "http://example.org/x",
    "number": "1",
    "quantity": "1",
}
#: Searched over the server's own logs, with the parameters those searches take (a part of the registry's).
LOG_TYPES = frozenset({"AuditEvent", "Provenance"})


@cache
def _examples() -> dict[str, list[Path]]:
    by_type: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(EXAMPLES.glob("*.json")):
        by_type[path.name.split("-", 1)[0]].append(path)
    return by_type


def _statement(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = client.get("/fhir/metadata", headers=headers or {})
    assert response.status_code == 200, response.text
    statement: dict[str, Any] = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    return statement


def _store_one(client: TestClient, resource_type: str) -> dict[str, Any]:
    """``resource_type`` at ``[type]/cap-1`` by update-as-create (the statement says ``updateCreate``): the
    first HL7 example the server accepts, or the smallest valid body."""
    candidates = [json.loads(path.read_text()) for path in _examples().get(resource_type, [])]
    candidates = [body for body in candidates if body.get("resourceType") == resource_type]
    candidates.append({"resourceType": resource_type, **SMALLEST.get(resource_type, {})})
    refusals = []
    for body in candidates:
        response = client.put(f"/fhir/{resource_type}/{ID}", json=body | {"id": ID})
        if response.status_code == 201:
            stored: dict[str, Any] = response.json()
            return stored
        assert response.status_code in (400, 422), (resource_type, response.status_code, response.text)
        refusals.append(response.json()["issue"][0].get("diagnostics", ""))
    raise AssertionError(f"no {resource_type} was accepted: {refusals}")


def _check_interactions(client: TestClient, resource: dict[str, Any]) -> None:
    """Each listed interaction of one type, with the answer R4 §3.1.0 gives it."""
    kind = resource["type"]
    instance = f"/fhir/{kind}/{ID}"
    listed = {interaction["code"] for interaction in resource["interaction"]}
    assert listed, kind
    stored = _store_one(client, kind) if "update" in listed else None  # update-as-create: 201 checked there
    assert stored is not None and resource["updateCreate"] is True, kind
    answers: dict[str, int] = {}
    if "read" in listed:
        answers["read"] = client.get(instance).status_code
    if "vread" in listed:
        answers["vread"] = client.get(f"{instance}/_history/1").status_code
    if "patch" in listed:
        patched = client.patch(instance, json=[{"op": "add", "path": "/language", "value": "es"}], headers=JSON_PATCH)
        answers["patch"] = patched.status_code
        assert patched.status_code != 200 or patched.json()["language"] == "es", patched.text
    if "history-instance" in listed:
        history = client.get(f"{instance}/_history")
        answers["history-instance"] = history.status_code
        assert history.status_code != 200 or history.json()["total"] == 1 + ("patch" in listed), history.text
    if "history-type" in listed:
        answers["history-type"] = client.get(f"/fhir/{kind}/_history").status_code
    if "search-type" in listed:
        searched = client.get(f"/fhir/{kind}", params={"_count": "1"})
        answers["search-type"] = searched.status_code
        assert searched.status_code != 200 or searched.json()["type"] == "searchset", searched.text
    if "create" in listed:
        body = {key: value for key, value in stored.items() if key not in ("id", "meta")}
        answers["create"] = client.post(f"/fhir/{kind}", json=body).status_code
    if "delete" in listed:
        answers["delete"] = client.delete(instance).status_code
    expected = {"read": 200, "vread": 200, "patch": 200, "history-instance": 200, "history-type": 200,
                "search-type": 200, "create": 201, "delete": 204}  # fmt: skip
    assert listed - {"update"} == set(answers), (kind, listed)
    assert answers == {code: expected[code] for code in answers}, (kind, answers)


def _check_conditionals(client: TestClient, resource: dict[str, Any]) -> None:
    """The conditional interactions the statement claims for one type (R4 §3.1.0.8, §3.1.0.4.3, §3.1.0.6.1,
    §3.1.0.2 conditional read): here on the deleted instance's successor, matched by ``_id``."""
    kind, url = resource["type"], f"/fhir/{resource['type']}/{ID}"
    body = {key: value for key, value in _store_one(client, kind).items() if key != "meta"}
    assert resource["conditionalRead"] == "full-support" and resource["conditionalCreate"] is True
    assert resource["conditionalUpdate"] is True and resource["conditionalDelete"] == "single"
    read = client.get(url)
    not_modified = client.get(url, headers={"If-None-Match": read.headers["etag"]})
    since = client.get(url, headers={"If-Modified-Since": read.headers["last-modified"]})
    assert (not_modified.status_code, since.status_code) == (304, 304), kind
    condition = f"_id={ID}"
    created = client.post(f"/fhir/{kind}", json=body, headers={"If-None-Exist": condition})
    assert created.status_code == 200 and created.json()["id"] == ID, (kind, created.text)
    updated = client.put(f"/fhir/{kind}?{condition}", json=body | {"language": "en"})
    assert updated.status_code == 200 and updated.json()["id"] == ID, (kind, updated.text)
    deleted = client.delete(f"/fhir/{kind}?{condition}")
    assert deleted.status_code == 204 and client.get(url).status_code == 410, (kind, deleted.text)


def test_every_listed_interaction_answers(client: TestClient) -> None:
    resources = _statement(client)["rest"][0]["resource"]
    assert {resource["type"] for resource in resources} == set(supported_types())
    for resource in resources:
        _check_interactions(client, resource)
        _check_conditionals(client, resource)
    rest = _statement(client)["rest"][0]
    system = {interaction["code"] for interaction in rest["interaction"]}
    assert system == {"transaction", "batch", "search-system", "history-system"}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Patient"}}]}
    assert client.post("/fhir", json=batch).json()["type"] == "batch-response"
    basic = {"resourceType": "Basic", "code": {"text": "x"}}
    entry = {"resource": basic, "request": {"method": "POST", "url": "Basic"}}
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    assert client.post("/fhir", json=transaction).json()["type"] == "transaction-response"
    assert client.get("/fhir", params={"_type": "Patient"}).json()["type"] == "searchset"
    assert client.get("/fhir/_history").json()["type"] == "history"
    compartment = client.get("/fhir/Patient/x/Observation")  # rest.compartment: the patient compartment
    assert compartment.status_code == 200 and compartment.json()["type"] == "searchset", compartment.text


def test_every_listed_search_parameter_and_include_answers(client: TestClient) -> None:
    """Each parameter of each type, with a value of its search type, and each of its includes and (a sample
    of) its revincludes: understood (200), not refused."""
    refused = []
    for resource in _statement(client)["rest"][0]["resource"]:
        kind = resource["type"]
        assert resource["searchParam"], kind
        queries = [{param["name"]: VALUES[param["type"]]} for param in resource["searchParam"]]
        queries += [{"_include": include} for include in resource.get("searchInclude", [])]
        queries += [{"_revinclude": include} for include in resource.get("searchRevInclude", [])[:5]]
        for query in queries:
            response = client.get(f"/fhir/{kind}", params=query | {"_count": "1"})
            if response.status_code != 200:
                refused.append((kind, query, response.status_code, response.text[:200]))
    assert not refused, refused


def test_everything_the_search_registry_and_operations_define_is_listed(client: TestClient) -> None:
    rest = _statement(client)["rest"][0]
    by_type = {resource["type"]: resource for resource in rest["resource"]}
    revincludes: dict[str, set[str]] = defaultdict(set)
    for kind in supported_types():
        resource = by_type[kind]
        listed = {param["name"]: param["type"] for param in resource["searchParam"]}
        registry = declared(kind)
        if kind in LOG_TYPES:  # searched over the server's logs: only what those searches take (a subset)
            assert listed and listed.items() <= registry.items(), kind
            assert "searchInclude" not in resource and "searchRevInclude" not in resource, kind
            continue
        assert listed == registry, kind
        references = sorted(f"{kind}:{code}" for code, param in parameters(kind).items() if param.type == "reference")
        assert resource.get("searchInclude", ["*"])[1:] == references, kind
        for code, param in parameters(kind).items():
            if param.type != "reference":
                continue
            targets = supported_types() if not param.targets or "Resource" in param.targets else param.targets
            for target in set(targets) - LOG_TYPES:  # searches over the logs take no _revinclude
                revincludes[target].add(f"{kind}:{code}")
    for kind in supported_types():  # R4 §3.1.1.5.4: Source:param under each type the parameter points to
        assert set(by_type[kind].get("searchRevInclude", [])) == revincludes[kind], kind
    for op in OPERATIONS:
        levels: list[str | None] = [None] if op.system else []
        levels += list(op.resource) if (op.type or op.instance) else []
        for level in levels:
            listed_ops = rest["operation"] if level is None else by_type[level].get("operation", [])
            assert any(item["name"] == op.code and item["definition"].endswith(f"/{op.id}") for item in listed_ops), (
                op.id,
                level,
            )


#: FHIR routes that are part of a listed capability rather than one of their own: the $export and $import
#: status and file endpoints (the Bulk Data kick-off's async pattern, R4 async.html), the statement itself.
ASYNC_PATTERN = re.compile(r"^/\$(export-(status|file)|import-status)/")


def _accounted_for(path: str, method: str, rest: dict[str, Any]) -> str | bool | None:
    """Why the statement covers ``method path``; None or False when it does not."""
    by_type = {resource["type"]: resource for resource in rest["resource"]}
    system = {interaction["code"] for interaction in rest["interaction"]}

    def interactions(kind: str) -> set[str]:
        return {interaction["code"] for interaction in by_type[kind]["interaction"]} if kind in by_type else set()

    every = set.intersection(*(interactions(kind) for kind in by_type))
    if path in ("", "/"):
        return {"POST": "batch" in system and "transaction" in system, "GET": "search-system" in system}.get(
            method
        ) and "system interaction"
    if path == "/metadata" or ASYNC_PATTERN.match(path):
        return "capabilities / async pattern"
    if path == "/.well-known/smart-configuration":
        return "rest.security"  # checked with authentication on in test_security_is_declared
    if path == "/_history":
        return "history-system" in system and "history-system"
    if path == "/_search":
        return "search-system" in system and "search-system"
    operation = re.match(
        r"^(?:/(?P<type>[A-Z][A-Za-z]+|\{resource_type\}))?(?P<instance>/\{[a-z_]+\})?/\$(?P<name>[a-z-]+)$", path
    )
    if operation:
        kind, name = operation["type"], operation["name"]
        if kind == "{resource_type}":  # an operation of every type ($validate): listed on each
            return (
                all(
                    any(item["name"] == name for item in resource.get("operation", [])) for resource in rest["resource"]
                )
                and f"operation ${name} on every type"
            )
        listed = rest["operation"] if kind is None else by_type.get(kind, {}).get("operation", [])
        return any(item["name"] == name for item in listed) and f"operation ${name}"
    generic = {
        ("/{resource_type}", "GET"): "search-type",
        ("/{resource_type}", "POST"): "create",
        ("/{resource_type}/_search", "POST"): "search-type",
        ("/{resource_type}/_history", "GET"): "history-type",
        ("/{resource_type}/{resource_id}", "GET"): "read",
        ("/{resource_type}/{resource_id}", "PUT"): "update",
        ("/{resource_type}/{resource_id}", "PATCH"): "patch",
        ("/{resource_type}/{resource_id}", "DELETE"): "delete",
        ("/{resource_type}/{resource_id}/_history", "GET"): "history-instance",
        ("/{resource_type}/{resource_id}/_history/{version_id}", "GET"): "vread",
    }
    if (path, method) in generic:
        return generic[path, method] in every and generic[path, method]
    conditional = {"PUT": "conditionalUpdate", "DELETE": "conditionalDelete", "PATCH": "patch"}
    if path == "/{resource_type}" and method in conditional:
        flag = conditional[method]
        return all(resource.get(flag) not in (None, False, "not-supported") or flag in interactions(resource["type"])
                   for resource in rest["resource"]) and f"conditional {method}"  # fmt: skip
    compartment = re.match(r"^/\{compartment_type\}/\{compartment_id\}/\{resource_type\}(/_search)?$", path)
    if compartment:
        return bool(rest.get("compartment")) and "rest.compartment"
    # Routes of one type (Binary's native content): the interactions listed for that type.
    specific = re.match(
        r"^/(?P<type>[A-Z][A-Za-z]+)(?P<instance>/\{[a-z_]+\})?(?P<version>/_history/\{[a-z_]+\})?$", path
    )
    if specific:
        kind = specific["type"]
        level = "version" if specific["version"] else "instance" if specific["instance"] else "type"
        codes = {("GET", "type"): "search-type", ("POST", "type"): "create", ("GET", "instance"): "read",
                 ("PUT", "instance"): "update", ("PATCH", "instance"): "patch", ("DELETE", "instance"): "delete",
                 ("GET", "version"): "vread"}  # fmt: skip
        code = codes.get((method, level))
        return code is not None and code in interactions(kind) and f"{kind} {code}"
    return None


def _routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(method, path)`` of every route, through the routers included in one another."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield from ((method, prefix + route.path) for method in sorted(route.methods or ()))
        elif (included := getattr(route, "original_router", None)) is not None:  # FastAPI's lazily included router
            yield from _routes(included.routes, prefix + getattr(getattr(route, "include_context", None), "prefix", ""))


def test_every_fhir_route_is_listed(client: TestClient) -> None:
    rest = _statement(client)["rest"][0]
    app: FastAPI = client.app  # type: ignore[assignment]
    routes = [(method, path) for method, path in _routes(app.routes) if path.startswith("/fhir")]
    assert len(routes) > 40
    unlisted = [
        (method, path) for method, path in routes if not _accounted_for(path.removeprefix("/fhir"), method, rest)
    ]
    assert not unlisted, f"answered by the server but not in the CapabilityStatement: {unlisted}"


def test_security_is_declared(secured_client: tuple[TestClient, Settings]) -> None:
    """``rest.security`` says what the server enforces: SMART on FHIR bearer tokens (R4 capabilitystatement
    rest.security.service, SMART App Launch "Conformance"), with its configuration served."""
    secured, settings = secured_client
    security = _statement(secured)["rest"][0]["security"]  # the statement itself needs no token
    codings = [coding for service in security["service"] for coding in service["coding"]]
    assert codings == [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR"}]  # fmt: skip
    unauthenticated = secured.get("/fhir/Patient")
    assert unauthenticated.status_code == 401 and unauthenticated.json()["resourceType"] == "OperationOutcome"
    assert secured.get("/fhir/Patient", headers=staff_headers(settings, "IMSS")).status_code == 200
    configuration = secured.get("/fhir/.well-known/smart-configuration")
    assert configuration.status_code == 200 and configuration.json()["capabilities"], configuration.text


def test_disabled_security_is_declared(client: TestClient) -> None:
    security = _statement(client)["rest"][0]["security"]
    assert "service" not in security and "disabled" in security["description"]
    assert client.get("/fhir/Patient").status_code == 200
