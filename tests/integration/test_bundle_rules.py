"""R4 http.html#transaction and #trules over HTTP, on every backend.

A transaction is evaluated as one unit, GET entries included: processed DELETE, POST, PUT/PATCH, GET/HEAD,
GETs see the transaction's own writes, and any entry's failure fails the whole Bundle with one
OperationOutcome naming the entry and carrying the status it would have had; nothing is stored then
(checked on the event log itself, not only on the answer). Search entries answer ``searchset`` Bundles in
batch and transaction, under the access policy of a direct search. Batch entries fail independently.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.audit import AuditRecord
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.auth import mint_development_token
from fhir_api.services import Services

FHIR = {"content-type": "application/fhir+json"}
SYSTEM = "urn:ehr-core:test:mrn"


def _bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _post(resource: dict[str, Any], url: str | None = None, **request: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": url or resource["resourceType"]},
    }
    entry["request"].update(request)
    return entry


def _put(resource: dict[str, Any], url: str, **request: str) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PUT", "url": url, **request}}


def _get(url: str, method: str = "GET") -> dict[str, Any]:
    return {"request": {"method": method, "url": url}}


def _patient(family: str, mrn: str | None = None, **more: Any) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": family}], **more}
    if mrn is not None:
        patient["identifier"] = [{"system": SYSTEM, "value": mrn}]
    return patient


def _last_event(services: Services) -> int:
    """The event log's last notification id: the store itself, not a view or an answer."""
    return int(services.application.recorder.max_notification_id() or 0)


def _found(client: TestClient, query: str, headers: dict[str, str] | None = None) -> int:
    answer = client.get(f"/fhir/{query}", headers=headers)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["total"])


def _assert_one_issue_naming(response: Any, index: int, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    errors = [issue for issue in outcome["issue"] if issue["severity"] in ("error", "fatal")]
    assert len(errors) == 1, outcome
    issue: dict[str, Any] = errors[0]
    assert issue["diagnostics"].count(f"Bundle.entry[{index}]") == 1, issue
    assert issue["expression"][0].startswith(f"Bundle.entry[{index}]"), issue
    return issue


# -- a transaction succeeds or fails as a whole (R4 §3.1.0.11.2) ----------------------------------------


def test_a_failing_read_entry_fails_the_transaction_and_stores_nothing(client: TestClient, services: Services) -> None:
    before = _last_event(services)
    bundle = _bundle("transaction", _post(_patient("Failread")), _get("Patient/does-not-exist"))
    response = client.post("/fhir", json=bundle, headers=FHIR)
    _assert_one_issue_naming(response, 1, 404)
    assert _last_event(services) == before
    assert _found(client, "Patient?family=Failread") == 0


def test_a_failing_search_entry_fails_the_transaction_and_stores_nothing(
    client: TestClient, services: Services
) -> None:
    before = _last_event(services)
    bundle = _bundle("transaction", _post(_patient("Failsearch")), _get("Patient?no-such-parameter=1"))
    response = client.post("/fhir", json=bundle, headers=FHIR)
    issue = _assert_one_issue_naming(response, 1, 400)
    assert issue["code"] == "not-supported" and "no-such-parameter" in issue["diagnostics"]
    assert _last_event(services) == before
    assert _found(client, "Patient?family=Failsearch") == 0
    # A malformed value fails it too.
    bundle = _bundle("transaction", _post(_patient("Failsearch")), _get("Patient?birthdate=not-a-date"))
    assert client.post("/fhir", json=bundle, headers=FHIR).status_code == 400
    assert _last_event(services) == before


def test_a_read_of_a_resource_the_transaction_deletes_fails_it(client: TestClient, services: Services) -> None:
    assert client.put("/fhir/Patient/doomed", json={"resourceType": "Patient", "id": "doomed"}).status_code == 201
    before = _last_event(services)
    bundle = _bundle(
        "transaction",
        _get("Patient/doomed"),
        {"request": {"method": "DELETE", "url": "Patient/doomed"}},
        _post(_patient("Alongside")),
    )
    _assert_one_issue_naming(client.post("/fhir", json=bundle, headers=FHIR), 0, 410)
    assert _last_event(services) == before
    assert client.get("/fhir/Patient/doomed").status_code == 200


@pytest.mark.parametrize("failure", ["several-match", "unresolved-reference", "stale-if-match"])
def test_a_failing_conditional_entry_fails_the_transaction_and_stores_nothing(
    client: TestClient, services: Services, failure: str
) -> None:
    for _ in range(2):  # two records with one identifier: a condition on it is ambiguous
        assert client.post("/fhir/Patient", json=_patient("Twin", "twin-1")).status_code == 201
    assert client.put("/fhir/Patient/versioned", json={"resourceType": "Patient", "id": "versioned"}).is_success
    before = _last_event(services)
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "conditional-failure"},
        "subject": {"reference": "Patient/versioned"},
    }
    if failure == "several-match":
        entry = _put(_patient("Twin", "twin-1"), f"Patient?identifier={SYSTEM}|twin-1")
        status = 412
    elif failure == "unresolved-reference":
        entry = _post(observation | {"subject": {"reference": f"Patient?identifier={SYSTEM}|nobody"}})
        status = 422  # a conditional reference that matches nothing, as on its own (R4 http.html#trules)
    else:
        entry = _put({"resourceType": "Patient", "id": "versioned"}, "Patient/versioned", ifMatch='W/"7"')
        status = 412
    bundle = _bundle("transaction", _post(observation), entry, _get("Observation?code:text=conditional-failure"))
    _assert_one_issue_naming(client.post("/fhir", json=bundle, headers=FHIR), 1, status)
    assert _last_event(services) == before
    assert _found(client, "Observation?code:text=conditional-failure") == 0


# -- GET entries come last and see the transaction's own writes -----------------------------------------


def test_get_entries_see_the_transactions_own_writes(client: TestClient, services: Services) -> None:
    assert client.put("/fhir/Patient/kept", json=_patient("Kept", id="kept")).status_code == 201
    bundle = _bundle(
        "transaction",
        _get("Patient/own-1"),
        _get("Patient?family=Ownwrite"),
        _get("Patient/kept/_history/2"),
        _get("Patient/own-1", method="HEAD"),
        _put(_patient("Ownwrite", id="own-1"), "Patient/own-1"),
        _put(_patient("Kept", gender="female", id="kept"), "Patient/kept"),
    )
    response = client.post("/fhir", json=bundle, headers=FHIR)
    assert response.status_code == 200, response.text
    read, search, vread, head, created, updated = response.json()["entry"]
    assert created["response"]["status"] == "201 Created" and updated["response"]["status"] == "200 OK"
    assert read["response"]["status"] == "200 OK" and read["resource"]["name"] == [{"family": "Ownwrite"}]
    assert read["response"]["etag"] == 'W/"1"'
    assert search["resource"]["type"] == "searchset" and search["resource"]["total"] == 1
    assert search["resource"]["entry"][0]["resource"]["id"] == "own-1"
    assert vread["resource"]["gender"] == "female" and vread["response"]["etag"] == 'W/"2"'
    assert head["response"]["status"] == "200 OK" and "resource" not in head
    # A transaction of reads only stores nothing.
    before = _last_event(services)
    reads = _bundle("transaction", _get("Patient/own-1"), _get("Patient?family=Kept"))
    answer = client.post("/fhir", json=reads, headers=FHIR)
    assert answer.status_code == 200, answer.text
    assert answer.json()["entry"][1]["resource"]["total"] == 1
    assert _last_event(services) == before


# -- search entries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_search_entries_answer_searchsets(client: TestClient, kind: str) -> None:
    for family in ("Peterson", "Peterson", "Other"):
        assert client.post("/fhir/Patient", json=_patient(family)).status_code == 201
    bundle = _bundle(
        kind, _get("Patient?family=peterson"), _get("Patient?family=nobody-at-all&_count=5"), _get("Patient")
    )
    response = client.post("/fhir", json=bundle, headers=FHIR)
    assert response.status_code == 200, response.text
    assert response.json()["type"] == f"{kind}-response"
    two, none, every = response.json()["entry"]
    for entry in (two, none, every):
        assert entry["response"]["status"] == "200 OK"
        assert entry["resource"]["resourceType"] == "Bundle" and entry["resource"]["type"] == "searchset"
    assert two["resource"]["total"] == 2
    assert {e["search"]["mode"] for e in two["resource"]["entry"]} == {"match"}
    assert {e["resource"]["name"][0]["family"] for e in two["resource"]["entry"]} == {"Peterson"}
    assert none["resource"]["total"] == 0 and none["resource"]["entry"] == []
    assert every["resource"]["total"] == 3


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_system_and_compartment_search_entries_answer_searchsets(client: TestClient, kind: str) -> None:
    patient = client.post("/fhir/Patient", json=_patient("Compartida")).json()["id"]
    other = client.post("/fhir/Patient", json=_patient("Ajena")).json()["id"]
    for subject in (patient, patient, other):
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "peso"},
            "subject": {"reference": f"Patient/{subject}"},
        }
        assert client.post("/fhir/Observation", json=observation).status_code == 201
    bundle = _bundle(
        kind,
        _get(f"Patient/{patient}/Observation"),
        _get("?_type=Patient&family=compartida"),
        _get(f"Patient/{patient}/Organization"),
    )
    response = client.post("/fhir", json=bundle, headers=FHIR)
    if kind == "transaction":
        # Organization is in no Patient compartment: that entry fails, and with it the transaction.
        assert response.status_code == 400, response.text
        assert "Bundle.entry[2]" in response.json()["issue"][0]["diagnostics"]
        bundle["entry"] = bundle["entry"][:2]
        response = client.post("/fhir", json=bundle, headers=FHIR)
    assert response.status_code == 200, response.text
    compartment, system, *rest = response.json()["entry"]
    assert compartment["resource"]["type"] == "searchset" and compartment["resource"]["total"] == 2
    subjects = {e["resource"]["subject"]["reference"] for e in compartment["resource"]["entry"]}
    assert subjects == {f"Patient/{patient}"}
    assert system["resource"]["type"] == "searchset"
    assert [e["resource"]["id"] for e in system["resource"]["entry"] if e["search"]["mode"] == "match"] == [patient]
    if rest:
        assert rest[0]["response"]["status"].startswith("400")


def test_a_lenient_bundle_ignores_unknown_search_parameters_with_a_warning(client: TestClient) -> None:
    assert client.post("/fhir/Patient", json=_patient("Lenient")).status_code == 201
    bundle = _bundle("transaction", _get("Patient?family=lenient&no-such-parameter=1"))
    response = client.post("/fhir", json=bundle, headers=FHIR | {"Prefer": "handling=lenient"})
    assert response.status_code == 200, response.text
    searchset = response.json()["entry"][0]["resource"]
    assert searchset["total"] == 1
    outcome = [e for e in searchset["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["resource"]["issue"][0]["severity"] == "warning"


# -- batch entries fail independently (R4 §3.1.0.11.1) ---------------------------------------------------


def test_batch_entries_fail_independently(client: TestClient, services: Services) -> None:
    bundle = _bundle(
        "batch",
        _post(_patient("Batchkept")),
        _get("Patient/does-not-exist"),
        _get("Patient?no-such-parameter=1"),
        _post({"resourceType": "Patient", "gender": 3}),
        _get("Patient?family=batchkept"),
        _get("ValueSet/$lookup"),
    )
    before = _last_event(services)
    response = client.post("/fhir", json=bundle, headers=FHIR)
    assert response.status_code == 200, response.text
    created, missing, bad_search, invalid, search, operation = response.json()["entry"]
    assert created["response"]["status"] == "201 Created"
    assert missing["response"]["status"].startswith("404")
    assert bad_search["response"]["status"].startswith("400")
    assert invalid["response"]["status"].startswith("400")
    for index, failed in ((1, missing), (2, bad_search), (3, invalid), (5, operation)):
        issues = failed["response"]["outcome"]["issue"]
        assert all(issue["diagnostics"].count(f"Bundle.entry[{index}]") == 1 for issue in issues), issues
    # The batch's GETs come after its writes: the search finds the Patient created by entry 0.
    assert search["resource"]["type"] == "searchset" and search["resource"]["total"] == 1
    assert operation["response"]["status"].startswith("400")
    assert operation["response"]["outcome"]["issue"][0]["code"] == "not-supported"
    assert _last_event(services) > before
    assert _found(client, "Patient?family=Batchkept") == 1


# -- entry answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["batch", "transaction"])
@pytest.mark.parametrize(("method", "url"), [("GET", "ValueSet/$lookup"), ("POST", "ValueSet/$lookup")])
def test_an_unsupported_operation_entry_is_not_supported(client: TestClient, kind: str, method: str, url: str) -> None:
    entry: dict[str, Any] = {"request": {"method": method, "url": url}}
    if method == "POST":
        entry["resource"] = {"resourceType": "Parameters"}
    response = client.post("/fhir", json=_bundle(kind, entry), headers=FHIR)
    if kind == "transaction":
        issue = _assert_one_issue_naming(response, 0, 400)
    else:
        assert response.status_code == 200, response.text
        answer = response.json()["entry"][0]["response"]
        assert answer["status"].startswith("400")
        issue = answer["outcome"]["issue"][0]
    assert issue["code"] == "not-supported" and "$lookup" in issue["diagnostics"]
    assert "invalid id" not in issue["diagnostics"]


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_query_strings_on_write_entries_are_read_as_over_rest(client: TestClient, kind: str) -> None:
    assert client.post("/fhir/Patient", json=_patient("Conditional", "cond-1")).status_code == 201
    bundle = _bundle(
        kind,
        _put({"resourceType": "Patient", "id": f"q-{kind}"}, f"Patient/q-{kind}?_pretty=true&_unknown=1"),
        _post(_patient("Posted"), "Patient?_format=json"),
        _put(_patient("Conditional", "cond-1", gender="male"), f"Patient?identifier={SYSTEM}|cond-1&_unknown=2"),
    )
    response = client.post("/fhir", json=bundle, headers=FHIR)
    assert response.status_code == 200, response.text
    put, post, conditional = response.json()["entry"]
    assert put["response"]["status"] == "201 Created"
    warnings = put["response"]["outcome"]["issue"]
    assert [w["severity"] for w in warnings] == ["warning"] and "_unknown" in warnings[0]["diagnostics"]
    assert "_pretty" not in put["response"]["outcome"]["issue"][0]["diagnostics"]
    assert post["response"]["status"] == "201 Created" and "outcome" not in post["response"]
    assert conditional["response"]["status"] == "200 OK"
    assert "_unknown" in conditional["response"]["outcome"]["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/Patient/q-{kind}").status_code == 200
    assert _found(client, f"Patient?identifier={SYSTEM}|cond-1&gender=male") == 1


def test_an_unknown_criterion_on_a_conditional_entry_still_fails(client: TestClient) -> None:
    bundle = _bundle("transaction", _put(_patient("Cond"), "Patient?no-such-parameter=1"))
    issue = _assert_one_issue_naming(client.post("/fhir", json=bundle, headers=FHIR), 0, 400)
    assert "no-such-parameter" in issue["diagnostics"]
    malformed = _bundle("transaction", _post(_patient("First")), _put(_patient("Cond"), "Patient?birthdate=nope&_x=1"))
    _assert_one_issue_naming(client.post("/fhir", json=malformed, headers=FHIR), 1, 400)


def test_each_diagnostic_names_its_entry_once(client: TestClient) -> None:
    assert client.put("/fhir/Patient/etag", json={"resourceType": "Patient", "id": "etag"}).status_code == 201
    entries = [_post(_patient(f"Named{i}")) for i in range(4)]
    entries.append(_put({"resourceType": "Patient", "id": "etag"}, "Patient/etag", ifMatch="not-an-etag"))
    issue = _assert_one_issue_naming(client.post("/fhir", json=_bundle("transaction", *entries), headers=FHIR), 4, 400)
    assert "ifMatch" in issue["diagnostics"]
    stale = [*entries[:4], _put({"resourceType": "Patient", "id": "etag"}, "Patient/etag", ifMatch='W/"9"')]
    _assert_one_issue_naming(client.post("/fhir", json=_bundle("transaction", *stale), headers=FHIR), 4, 412)


# -- the access policy: search and read entries as a direct search or read ------------------------------


@pytest.fixture
def secured(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Services, Settings]]:
    configured = settings.model_copy(update={"auth": "required", "data_dir": tmp_path / "ehr-data"})
    services = Services.open(configured)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client, services, configured
    finally:
        services.close()


def _token(settings: Settings, institution: str, scope: str = "user/*.cruds") -> dict[str, str]:
    claims = {"institution": institution, "user": f"{institution.lower()}-user", "role": "physician", "scope": scope}
    return FHIR | {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


def test_search_entries_follow_the_access_policy_and_scopes(secured: tuple[TestClient, Services, Settings]) -> None:
    client, services, settings = secured
    imss, issste = _token(settings, "IMSS"), _token(settings, "ISSSTE")
    hidden = client.post("/fhir/Patient", json=_patient("Hidden"), headers=imss)
    assert hidden.status_code == 201
    direct = client.get("/fhir/Patient?family=hidden", headers=issste).json()
    for kind in ("batch", "transaction"):
        bundle = _bundle(kind, _get("Patient?family=hidden"))
        for headers, total in ((imss, 1), (issste, 0)):
            response = client.post("/fhir", json=bundle, headers=headers)
            assert response.status_code == 200, response.text
            assert response.json()["entry"][0]["resource"]["total"] == total
        # The same answer as the direct search: another institution's record, no consent, is withheld.
        assert direct["total"] == 0
    # A token that may write but not search: its search entry is refused as a direct search is.
    writer = _token(settings, "IMSS", "user/*.cu")
    assert client.get("/fhir/Patient?family=hidden", headers=writer).status_code == 403
    refused = client.post("/fhir", json=_bundle("batch", _get("Patient?family=hidden")), headers=writer)
    assert refused.status_code == 200 and refused.json()["entry"][0]["response"]["status"].startswith("403")
    before = _last_event(services)
    transaction = _bundle("transaction", _post(_patient("Writer")), _get("Patient?family=hidden"))
    _assert_one_issue_naming(client.post("/fhir", json=transaction, headers=writer), 1, 403)
    assert _last_event(services) == before
    # What a search entry disclosed is audited, as the same search on its own would be: the Bundle's audit
    # entry names the patient the IMSS searchset held.
    assert services.compliance is not None
    deadline = time.monotonic() + 20
    while True:
        services.compliance.audit_views_current()
        events = services.compliance.audit_log.recorder.select_notifications(start=1, limit=10_000)
        recorded = [e for e in map(services.compliance.audit_log.mapper.to_domain_event, events)]
        bundles = [
            e.entry
            for e in recorded
            if isinstance(e, AuditRecord.Recorded)
            and (e.entry.get("path"), e.entry.get("user")) == ("/fhir", "imss-user")
        ]
        if any(hidden.json()["id"] in entry.get("patients", []) for entry in bundles) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert any(hidden.json()["id"] in entry.get("patients", []) for entry in bundles), bundles
