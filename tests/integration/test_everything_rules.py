"""``Patient/$everything`` as R4 patient-operation-everything defines it: the compartment plus what it
references, ``start``/``end``, ``_since``, ``_type``, ``_count`` paging, across linked records and under the
access policy (both backends)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from tests.support.access import consent, staff_headers

CURP = "urn:oid:2.16.840.1.113883.4.629"


def _put(client: TestClient, resource: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=headers)
    assert response.is_success, response.text


def _load(client: TestClient, headers: dict[str, str] | None = None) -> None:
    _put(client, {"resourceType": "Organization", "id": "org", "name": "UMF 20"}, headers)
    _put(client, {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "López"}]}, headers)
    _put(client, {"resourceType": "Location", "id": "loc", "name": "Consultorio 3"}, headers)
    _put(client, {"resourceType": "Medication", "id": "med", "code": {"text": "metformina"}}, headers)
    _put(client, {"resourceType": "Practitioner", "id": "unused", "name": [{"family": "Nadie"}]}, headers)
    _put(client, {"resourceType": "Patient", "id": "p1", "managingOrganization": {"reference": "Organization/org"}},
         headers)  # fmt: skip
    _put(client, {"resourceType": "Patient", "id": "p2"}, headers)
    encounter = {"resourceType": "Encounter", "id": "e2020", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "subject": {"reference": "Patient/p1"}, "period": {"start": "2020-03-01", "end": "2020-03-01"},
                 "participant": [{"individual": {"reference": "Practitioner/dr"}}],
                 "location": [{"location": {"reference": "Location/loc"}}]}  # fmt: skip
    _put(client, encounter, headers)
    request = {"resourceType": "MedicationRequest", "id": "mr2023", "status": "active", "intent": "order",
               "medicationReference": {"reference": "Medication/med"}, "subject": {"reference": "Patient/p1"},
               "authoredOn": "2023-06-15", "requester": {"reference": "Practitioner/dr"}}  # fmt: skip
    _put(client, request, headers)
    condition = {"resourceType": "Condition", "id": "c2021", "subject": {"reference": "Patient/p1"},
                 "onsetDateTime": "2021-01-10", "code": {"text": "diabetes"},
                 # another patient's record is not this one's, even when referenced
                 "evidence": [{"detail": [{"reference": "Patient/p2"}]}]}  # fmt: skip
    _put(client, condition, headers)


def _entries(bundle: dict[str, Any], mode: str | None = None) -> list[str]:
    return sorted(
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if mode is None or e["search"]["mode"] == mode
    )


def _get(client: TestClient, headers: dict[str, str] | None = None, **params: str) -> dict[str, Any]:
    response = client.get("/fhir/Patient/p1/$everything", params=params, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


COMPARTMENT = ["Condition/c2021", "Encounter/e2020", "MedicationRequest/mr2023", "Patient/p1"]
REFERENCED = ["Location/loc", "Medication/med", "Organization/org", "Practitioner/dr"]


def test_everything_includes_what_the_record_references(client: TestClient) -> None:
    _load(client)
    bundle = _get(client)
    assert _entries(bundle, "match") == COMPARTMENT
    assert _entries(bundle, "include") == REFERENCED
    sources = [e["resource"]["meta"]["source"] for e in bundle["entry"]]
    assert all(source.startswith("urn:ehr-core:source:") for source in sources)
    # _type narrows both; POST gives the same.
    assert _entries(_get(client, _type="Encounter,Practitioner")) == ["Encounter/e2020", "Practitioner/dr"]
    posted = client.post(
        "/fhir/Patient/p1/$everything",
        json={"resourceType": "Parameters", "parameter": [{"name": "start", "valueDate": "2023-01-01"}]},
    )
    assert _entries(posted.json(), "match") == ["MedicationRequest/mr2023", "Patient/p1"]


def test_everything_care_date_range(client: TestClient) -> None:
    _load(client)
    # The Patient has no care date: no range excludes it. Included resources follow their page's matches.
    assert _entries(_get(client, start="2021-01-01", end="2021-12-31"), "match") == ["Condition/c2021", "Patient/p1"]
    assert _entries(_get(client, start="2021-01-01", end="2021-12-31"), "include") == ["Organization/org"]
    assert _entries(_get(client, end="2020-03-01"), "match") == ["Encounter/e2020", "Patient/p1"]
    assert _entries(_get(client, start="2023-06-15"), "match") == ["MedicationRequest/mr2023", "Patient/p1"]
    assert _entries(_get(client, start="2020", end="2021"), "match") == ["Condition/c2021", "Encounter/e2020",
                                                                         "Patient/p1"]  # fmt: skip
    for params in ({"start": "yesterday"}, {"end": "2020-13"}, {"start": "2022-01-01", "end": "2021-01-01"}):
        bad = client.get("/fhir/Patient/p1/$everything", params=params)
        assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome", params


def test_everything_since_and_paging(client: TestClient) -> None:
    _load(client)
    seen: list[str] = []
    url: str | None = "/fhir/Patient/p1/$everything?_count=2"
    while url:
        page = client.get(url).json()
        assert len(_entries(page, "match")) <= 2
        seen += _entries(page, "match")
        for key in _entries(page, "include"):
            assert key in REFERENCED
        url = next((link["url"].split("testserver")[1] for link in page["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == COMPARTMENT and len(seen) == len(set(seen))
    # _since applies to included resources too.
    last = max(e["resource"]["meta"]["lastUpdated"] for e in _get(client)["entry"])
    assert _entries(_get(client, _since=last)) == ["Condition/c2021"]
    # Included resources are those the page's matches reference, themselves updated since then.
    condition = client.get("/fhir/Condition/c2021").json()
    _put(client, {**condition, "asserter": {"reference": "Practitioner/dr"}})
    assert _entries(_get(client, _since=last)) == ["Condition/c2021"]  # dr was not updated since
    _put(client, {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "López Ruiz"}]})
    assert _entries(_get(client, _since=last)) == ["Condition/c2021", "Practitioner/dr"]


def test_everything_across_linked_records_under_the_policy(secured_client: tuple[TestClient, Settings]) -> None:
    client, settings = secured_client
    imss, issste = staff_headers(settings, "IMSS"), staff_headers(settings, "ISSSTE")
    person = {"name": [{"family": "Aguilar Mora", "given": ["Ramón"]}], "gender": "male", "birthDate": "1974-05-24",
              "identifier": [{"system": CURP, "value": "AAMR740524HOCBRN08"}]}  # fmt: skip
    _put(client, {"resourceType": "Patient", "id": "a", **person}, imss)
    _put(client, {"resourceType": "Patient", "id": "b", **person}, issste)
    _put(client, {"resourceType": "Practitioner", "id": "dr-issste"}, issste)
    observation = {"resourceType": "Observation", "id": "ob", "status": "final", "code": {"text": "peso"},
                   "subject": {"reference": "Patient/b"}, "performer": [{"reference": "Practitioner/dr-issste"}],
                   "effectiveDateTime": "2024-02-02"}  # fmt: skip
    _put(client, observation, issste)
    # IMSS may not read ISSSTE's record: $everything of its own record answers 403 (all or nothing, as before).
    assert client.get("/fhir/Patient/a/$everything", headers=imss).status_code == 403
    # With the patient's consent on the ISSSTE record, the unified record holds both, and what they reference.
    assert client.post("/fhir/Consent", json=consent("b", "IMSS"), headers=issste).status_code == 201
    bundle = _get_for(client, "a", imss)
    assert {"Patient/a", "Patient/b", "Observation/ob"} <= set(_entries(bundle, "match"))
    assert _entries(bundle, "include") == ["Practitioner/dr-issste"]
    later = _entries(_get_for(client, "a", imss, start="2025-01-01"), "match")
    assert [key for key in later if not key.startswith("Consent/")] == ["Patient/a", "Patient/b"]  # undated stay
    # A referenced resource the caller may not read directly is not included either.
    _put(client, {"resourceType": "Patient", "id": "c"}, imss)
    _put(client, {"resourceType": "Device", "id": "dev", "manufacturer": "ISSSTE biomédica"}, issste)
    assert client.get("/fhir/Device/dev", headers=imss).status_code == 403
    used = {"resourceType": "Observation", "id": "oc", "status": "final", "code": {"text": "glucosa"},
            "subject": {"reference": "Patient/c"}, "device": {"reference": "Device/dev"}}  # fmt: skip
    _put(client, used, imss)
    own = _get_for(client, "c", imss)
    assert _entries(own) == ["Observation/oc", "Patient/c"] and "biomédica" not in str(own)


def _get_for(client: TestClient, patient: str, headers: dict[str, str], **params: str) -> dict[str, Any]:
    response = client.get(f"/fhir/Patient/{patient}/$everything", params=params, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result
