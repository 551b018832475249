"""Unmodified third-party FHIR clients against a real server process with authentication on, on each backend.

Three clients run one scenario: fhir-kit-client and the SMART JS client (``fhirclient``), from the npm
registry at the versions pinned in tests/e2e/clients/package-lock.json and driven by the small scripts next
to it under the machine's Node.js, and fhirpy (Python). Each reports, per step, the HTTP status and the body
the client handed back; every step is checked here against what R4 says the answer is:

- conditional create (R4 §3.1.0.8): no match makes the resource (201), one match creates nothing (200);
- batch (R4 §3.1.0.11.1): a ``batch-response`` with one entry per request in order, each with its own
  status; searches answer ``searchset`` Bundles, a missing resource a 404 with an OperationOutcome;
- ``Patient/[id]/$everything`` and ``Patient/[id]/$summary`` invoked by POST with a Parameters body
  (R4 operations.html): a ``searchset`` holding the patient and its record, an IPS ``document`` whose first
  entry is its Composition (bdl-9, bdl-10, bdl-11);
- conditional patch (R4 §3.1.0.5 with the search of §3.1.0.8): the one match is patched, version 2;
- history (R4 §3.1.0.11): ``history`` Bundles with a total, newest first, ``request`` and ``response`` on
  every entry (bdl-3, bdl-4); instance, type (only that type) and system level.

A second scenario, ``$validate`` (R4 resource-operation-validate), runs through fhir-kit-client's
``operation`` and @medplum/core's ``validateResource`` and ``post``/``get``: at type level with a resource
(200 and an OperationOutcome listing every issue, or only information for a valid one), at instance level
with a Parameters body (``resource``, ``mode`` update, ``profile``) and by GET on the stored instance with a
``profile`` (the profile's issues, its must-support elements as information).

The npm packages are installed by the ``node_clients`` fixture (tests/e2e/conftest.py).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import BaseFHIRError

from ehr_core.settings import Settings
from tests.support.server import REPO, ServerFailed, running_server

pytestmark = pytest.mark.e2e

SCRIPTS = {"fhir-kit-client": "fhir_kit_client.mjs", "fhirclient": "fhirclient.cjs"}
VALIDATE_SCRIPTS = {"fhir-kit-client": "fhir_kit_client_validate.mjs", "@medplum/core": "medplum_validate.mjs"}
MX_PATIENT = "http://ehr-core.mx/fhir/StructureDefinition/MXPatient"
#: A Patient breaking a required binding (administrative-gender) and two invariants (pat-1, per-1).
BROKEN_PATIENT = {
    "resourceType": "Patient",
    "gender": "banana",
    "contact": [{"gender": "male"}],
    "name": [{"family": "Ruiz", "period": {"start": "2020-02-01", "end": "2020-01-01"}}],
}
MRN = "urn:ehr-core:sid:imss:mrn"
#: Seconds for one client's whole scenario.
SCENARIO_TIMEOUT = 300


@dataclass(frozen=True)
class SecuredServer:
    base_url: str
    token: str


def _token(data_dir: Path) -> str:
    """A physician's token at IMSS, from ``ehr token`` against the server's own development issuer."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EHR_")}
    command = [sys.executable, "-m", "fhir_api.cli", "token", "--institution", "IMSS", "--user", "dr.e2e"]
    done = subprocess.run(
        [*command, "--data", str(data_dir)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def secured_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SecuredServer]:
    """``ehr serve`` with authentication required, on each backend, and a bearer token it accepts."""
    env = {"EHR_AUTH": "required"}
    if request.param == "postgres":
        settings: Settings = request.getfixturevalue("postgres_settings")
        assert settings.database_url is not None
        env |= {"EHR_DATABASE_URL": settings.database_url, "EHR_POSTGRES_SCHEMA": settings.postgres_schema}
    data_dir = tmp_path / "ehr-data"
    try:
        with running_server(data_dir, env) as (base_url, _):
            server = SecuredServer(base_url, _token(data_dir))
            refused = requests.get(f"{base_url}/Patient", timeout=30)
            assert refused.status_code == 401, "authentication must be on for these clients"
            yield server
    except ServerFailed as error:
        pytest.fail(f"the {request.param} server did not start: {error}", pytrace=False)


# -- the scenario, as each client runs it -------------------------------------------------------------------


def _run_node(home: Path, client: str, server: SecuredServer, mrn: str) -> dict[str, Any]:
    return _node(home, client, [SCRIPTS[client], server.base_url, server.token, MRN, mrn])


def _node(home: Path, client: str, arguments: list[str]) -> dict[str, Any]:
    command = ["node", *arguments]
    done = subprocess.run(command, cwd=home, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT)
    assert done.returncode == 0, f"{client} failed ({done.returncode}):\n{done.stderr[-4000:]}"
    steps: dict[str, Any] = json.loads(done.stdout)
    return steps


def _run_fhirpy(server: SecuredServer, mrn: str) -> dict[str, Any]:
    """The scenario through fhirpy's own API; the statuses come from a ``requests`` response hook, which
    fhirpy passes through (``requests_config``) without knowing of it."""
    statuses: list[int] = []

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        statuses.append(response.status_code)

    config = {"timeout": 60, "hooks": {"response": [record]}}
    client = SyncFHIRClient(server.base_url, authorization=f"Bearer {server.token}", requests_config=config)
    steps: dict[str, Any] = {}

    def step(name: str, call: Callable[[], Any]) -> Any:
        try:
            body = call()
        except BaseFHIRError as error:  # the body of an error answer, as fhirpy keeps it
            body = json.loads(str(error)) if str(error).startswith("{") else str(error)
        steps[name] = {"status": statuses[-1], "body": json.loads(json.dumps(body))}
        return body

    patient = {"identifier": [{"system": MRN, "value": mrn}], "name": [{"family": "Gómez", "given": ["Ana"]}],
               "birthDate": "1980-02-03"}  # fmt: skip
    by_mrn = client.resources("Patient").search(identifier=f"{MRN}|{mrn}")
    # fhirpy's conditional create: POST [type]?[search].
    created = step("create", lambda: by_mrn.get_or_create(client.resource("Patient", **patient))[0])
    step("create-again", lambda: by_mrn.get_or_create(client.resource("Patient", **patient))[0])
    patient_id = created["id"]
    observation = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        subject={"reference": f"Patient/{patient_id}"},
        valueQuantity={"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    )
    step("observation", observation.save)
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient?identifier={MRN}|{mrn}"}},
        {"request": {"method": "GET", "url": f"Observation?subject=Patient/{patient_id}&code=http://loinc.org|8867-4"}},
        {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
        {"request": {"method": "GET", "url": "Patient/never-written"}},
    ]}  # fmt: skip
    step("batch", lambda: client.execute("", method="post", data=batch))
    no_parameters = {"resourceType": "Parameters"}
    for operation in ("everything", "summary"):
        path = f"Patient/{patient_id}/${operation}"
        step(operation, functools.partial(client.execute, path, method="post", data=no_parameters))
    # fhirpy's conditional patch: PATCH [type]?[search] with a merge patch of the fields.
    step("patch", lambda: by_mrn.patch(active=True))
    step("history-instance", lambda: client.execute(f"Patient/{patient_id}/_history", method="get"))
    step("history-type", lambda: client.execute("Patient/_history", method="get"))
    step("history-system", lambda: client.execute("_history", method="get"))
    return steps


# -- what R4 says each step answers ---------------------------------------------------------------------------


def _ok(steps: dict[str, Any], name: str, status: int, resource_type: str) -> dict[str, Any]:
    step = steps[name]
    assert step["status"] == status, (name, step)
    body: dict[str, Any] = step["body"]
    assert body["resourceType"] == resource_type, (name, body)
    return body


def _history(steps: dict[str, Any], name: str) -> list[dict[str, Any]]:
    bundle = _ok(steps, name, 200, "Bundle")
    assert bundle["type"] == "history", bundle
    entries: list[dict[str, Any]] = bundle["entry"]
    assert bundle["total"] == len(entries), bundle  # every version fits in the first page here
    for entry in entries:  # bdl-3, bdl-4; every version here has a body
        assert set(entry["request"]) == {"method", "url"} and entry["response"]["status"], entry
        resource = entry["resource"]
        assert entry["fullUrl"].endswith(f"/{resource['resourceType']}/{resource['id']}"), entry
        assert entry["response"]["etag"] == f'W/"{resource["meta"]["versionId"]}"', entry
    instants = [entry["response"]["lastModified"] for entry in entries]
    assert instants == sorted(instants, reverse=True), "history is newest first"
    return entries


def _versions(entries: list[dict[str, Any]], reference: str) -> list[tuple[str, str, str]]:
    return [
        (entry["resource"]["meta"]["versionId"], entry["request"]["method"], entry["response"]["status"])
        for entry in entries
        if f"{entry['resource']['resourceType']}/{entry['resource']['id']}" == reference
    ]


def _check_scenario(steps: dict[str, Any], mrn: str) -> None:
    # Conditional create: 201 makes version 1; the same condition again matches it and creates nothing.
    created = _ok(steps, "create", 201, "Patient")
    patient_id, patient_ref = created["id"], f"Patient/{created['id']}"
    assert created["meta"]["versionId"] == "1" and created["identifier"] == [{"system": MRN, "value": mrn}]
    again = _ok(steps, "create-again", 200, "Patient")
    assert again["id"] == patient_id and again["meta"]["versionId"] == "1", again
    observation = _ok(steps, "observation", 201, "Observation")
    observation_ref = f"Observation/{observation['id']}"

    # Batch: a batch-response, entries in request order, each with its own outcome.
    batch = _ok(steps, "batch", 200, "Bundle")
    assert batch["type"] == "batch-response", batch
    entries = batch["entry"]
    assert [entry["response"]["status"].split()[0] for entry in entries] == ["200", "200", "200", "404"], entries
    for entry, expected in zip(entries[:2], (patient_ref, observation_ref), strict=True):
        searchset = entry["resource"]
        assert searchset["resourceType"] == "Bundle" and searchset["type"] == "searchset", searchset
        assert searchset["total"] == 1, searchset
        found = searchset["entry"][0]
        assert f"{found['resource']['resourceType']}/{found['resource']['id']}" == expected
        assert found["search"]["mode"] == "match"
    assert entries[2]["resource"]["id"] == patient_id and entries[2]["response"]["etag"] == 'W/"1"'
    assert "resource" not in entries[3]
    assert entries[3]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert [issue["code"] for issue in entries[3]["response"]["outcome"]["issue"]] == ["not-found"]

    # $everything: a searchset of the patient and its record (here, one Observation).
    everything = _ok(steps, "everything", 200, "Bundle")
    assert everything["type"] == "searchset", everything
    held = {f"{entry['resource']['resourceType']}/{entry['resource']['id']}" for entry in everything["entry"]}
    assert held == {patient_ref, observation_ref}, held

    # $summary: an IPS document; a Composition first, about this patient, the patient in the document.
    summary = _ok(steps, "summary", 200, "Bundle")
    assert summary["type"] == "document", summary
    assert summary["identifier"]["system"] and summary["identifier"]["value"] and summary["timestamp"]
    composition = summary["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition", composition
    assert composition["subject"]["reference"] == patient_ref
    assert composition["type"]["coding"][0] == {"system": "http://loinc.org", "code": "60591-5",
                                                "display": "Patient summary Document"}  # fmt: skip
    documented = {(entry["resource"]["resourceType"], entry["resource"]["id"]) for entry in summary["entry"]}
    assert ("Patient", patient_id) in documented

    # Conditional patch: the one match, version 2, with the change.
    patched = _ok(steps, "patch", 200, "Patient")
    assert patched["id"] == patient_id and patched["meta"]["versionId"] == "2" and patched["active"] is True
    assert patched["name"] == created["name"], "a patch keeps what it does not touch"

    # History, at three levels: what happened to the patient, newest first, the HTTP action of each.
    expected_patient = [("2", "PATCH", "200 OK"), ("1", "POST", "201 Created")]
    instance = _history(steps, "history-instance")
    assert _versions(instance, patient_ref) == expected_patient and len(instance) == 2
    by_type = _history(steps, "history-type")
    assert {entry["resource"]["resourceType"] for entry in by_type} == {"Patient"}
    assert _versions(by_type, patient_ref) == expected_patient and len(by_type) == 2
    system = _history(steps, "history-system")
    assert _versions(system, patient_ref) == expected_patient
    assert _versions(system, observation_ref) == [("1", "POST", "201 Created")] and len(system) == 3
    assert system[1]["resource"]["resourceType"] == "Observation", "the observation came between the two"


@pytest.mark.parametrize("client", sorted(SCRIPTS))
def test_js_client(client: str, node_clients: Path, secured_server: SecuredServer) -> None:
    mrn = f"M-{uuid.uuid4().hex[:8]}"
    steps = _run_node(node_clients, client, secured_server, mrn)
    _check_scenario(steps, mrn)


def test_fhirpy(secured_server: SecuredServer) -> None:
    mrn = f"M-{uuid.uuid4().hex[:8]}"
    steps = _run_fhirpy(secured_server, mrn)
    _check_scenario(steps, mrn)


def _outcome(steps: dict[str, Any], name: str) -> list[tuple[str, str, str, str]]:
    """(severity, code, expression, diagnostics) of each issue of the OperationOutcome a step answered 200."""
    outcome = _ok(steps, name, 200, "OperationOutcome")
    return [(i["severity"], i["code"], (i.get("expression") or [""])[0], i["diagnostics"]) for i in outcome["issue"]]


def _check_validate(steps: dict[str, Any]) -> None:
    assert {severity for severity, *_ in _outcome(steps, "type-valid")} == {"information"}, steps["type-valid"]
    broken = _outcome(steps, "type-broken")
    errors = {(code, where) for severity, code, where, _ in broken if severity == "error"}
    assert ("code-invalid", "Patient.gender") in errors, broken
    invariants = [text for severity, code, _, text in broken if code == "invariant"]
    assert any("pat-1" in text for text in invariants) and any("per-1" in text for text in invariants), broken
    _ok(steps, "create", 201, "Patient")
    # The instance, as posted (mode update) and as stored, against the Mexican Patient profile: no CURP.
    for name in ("instance-profile", "instance-stored"):
        issues = _outcome(steps, name)
        errors = [text for severity, _, _, text in issues if severity == "error"]
        assert any("Patient.identifier:curp" in text for text in errors), (name, issues)
        information = [where for severity, _, where, _ in issues if severity == "information"]
        assert "Patient.birthDate" in information, (name, issues)


@pytest.mark.parametrize("client", sorted(VALIDATE_SCRIPTS))
def test_js_client_validate(client: str, node_clients: Path, secured_server: SecuredServer) -> None:
    arguments = [VALIDATE_SCRIPTS[client], secured_server.base_url, secured_server.token]
    steps = _node(node_clients, client, [*arguments, json.dumps(BROKEN_PATIENT), MX_PATIENT])
    _check_validate(steps)
