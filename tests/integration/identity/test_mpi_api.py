"""The master patient index over HTTP, on SQLite and PostgreSQL: CURP rule, linking, unified record."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

CURP = "urn:oid:2.16.840.1.113883.4.629"
IMSS_MRN = "urn:ehr-core:sid:imss:mrn"
ISSSTE_MRN = "urn:ehr-core:sid:issste:mrn"
BIENESTAR = {"X-EHR-Institution": "IMSS-BIENESTAR", "X-EHR-Unit": "OCIMB000123", "X-EHR-User": "dra.lopez"}
ISSSTE = {"X-EHR-Institution": "ISSSTE", "X-EHR-Unit": "DFIST000312", "X-EHR-User": "dr.ruiz"}
IMSS = {"X-EHR-Institution": "IMSS", "X-EHR-Unit": "DFIMS000020", "X-EHR-User": "dr.perez"}
STEWARD = {"X-EHR-User": "steward.ana", "X-EHR-Role": "data-steward"}


def patient(
    family: str, given: str, birth: str, curp: str | None = None, mrn: tuple[str, str] | None = None, sex: str = "male"
) -> dict[str, Any]:
    identifiers = []
    if curp:
        identifiers.append({"system": CURP, "value": curp})
    if mrn:
        identifiers.append({"system": mrn[0], "value": mrn[1]})
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "gender": sex,
        "birthDate": birth,
    }
    if identifiers:
        resource["identifier"] = identifiers
    return resource


def create(client: TestClient, resource: dict[str, Any], headers: dict[str, str]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_malformed_curp_is_rejected_with_422_naming_the_identifier(client: TestClient) -> None:
    body = patient("Aguilar Mora", "Ramón", "1974-05-24", "AAMR740524HOCBRN09")
    response = client.post("/fhir/Patient", json=body)
    assert response.status_code == 422
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == "business-rule"
    assert issue["expression"] == ["Patient.identifier[0]"]
    assert "AAMR740524HOCBRN09" in issue["diagnostics"]
    # update and the placeholder
    assert client.put("/fhir/Patient/p1", json={**body, "id": "p1"}).status_code == 422
    placeholder = patient("Aguilar Mora", "Ramón", "1974-05-24", "XXXX999999XXXXXX99")
    assert client.post("/fhir/Patient", json=placeholder).status_code == 201


def test_certain_match_links_records_across_institutions(client: TestClient) -> None:
    a = create(client, patient("Aguilar Mora", "Ramón", "1974-05-24", "AAMR740524HOCBRN08", (IMSS_MRN, "1")), IMSS)
    b = create(client, patient("Aguilar", "Ramon", "1974-05-24", "AAMR740524HOCBRN08", (ISSSTE_MRN, "9")), ISSSTE)
    served = client.get(f"/fhir/Patient/{b}").json()
    assert served["link"] == [{"other": {"reference": f"Patient/{a}"}, "type": "seealso"}]
    person = client.get(f"/fhir/Patient/{a}/$person").json()
    assert person["resourceType"] == "Person"
    assert {link["target"]["reference"] for link in person["link"]} == {f"Patient/{a}", f"Patient/{b}"}
    pix = client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{IMSS_MRN}|1"}).json()
    values = [p["valueIdentifier"]["value"] for p in pix["parameter"] if p["name"] == "targetIdentifier"]
    assert "9" in values and "AAMR740524HOCBRN08" in values
    only_issste = client.get(
        "/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{IMSS_MRN}|1", "targetSystem": ISSSTE_MRN}
    ).json()
    assert [p["valueIdentifier"] for p in only_issste["parameter"] if p["name"] == "targetIdentifier"] == [
        {"system": ISSSTE_MRN, "value": "9"}
    ]
    assert client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{IMSS_MRN}|nope"}).status_code == 404


def test_placeholder_curps_never_link(client: TestClient) -> None:
    a = create(client, patient("Pérez López", "Juan", "1990-01-02", "XXXX999999XXXXXX99"), IMSS)
    b = create(client, patient("Pérez López", "Juan", "1990-01-02", "XXXX999999XXXXXX99"), ISSSTE)
    assert "link" not in client.get(f"/fhir/Patient/{a}").json()
    assert "link" not in client.get(f"/fhir/Patient/{b}").json()
    queue = client.get("/fhir/Person/$review").json()
    assert any(
        part["valueReference"]["reference"] == f"Patient/{b}"
        for item in queue.get("parameter", [])
        for part in item["part"]
        if part["name"] == "record"
    )


def test_match_returns_scores_and_grades(client: TestClient) -> None:
    a = create(client, patient("Aguilar Mora", "Ramón", "1974-05-24", "AAMR740524HOCBRN08"), IMSS)
    create(client, patient("Sánchez Ruiz", "Lucía", "1981-03-03", sex="female"), IMSS)
    query = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": patient("Aguilar Mora", "Ramon", "1974-05-24", "AAMR740524HOCBRN08")},
            {"name": "count", "valueInteger": 5},
        ],
    }
    found = client.post("/fhir/Patient/$match", json=query).json()
    assert found["type"] == "searchset"
    first = found["entry"][0]
    assert first["resource"]["id"] == a
    assert first["search"]["score"] == 1.0
    assert first["search"]["extension"][0]["valueCode"] == "certain"
    fuzzy = {**query, "parameter": [{"name": "resource", "resource": patient("Aguilar", "Ramon", "1974-05-24")}]}
    graded = client.post("/fhir/Patient/$match", json=fuzzy).json()["entry"][0]["search"]
    assert graded["extension"][0]["valueCode"] in ("probable", "possible") and 0 < graded["score"] < 1
    only = {**fuzzy, "parameter": [*fuzzy["parameter"], {"name": "onlyCertainMatches", "valueBoolean": True}]}
    assert client.post("/fhir/Patient/$match", json=only).json().get("entry") is None


def _encounter(client: TestClient, patient_id: str, headers: dict[str, str], code: str, display: str) -> None:
    reference = {"reference": f"Patient/{patient_id}"}
    encounter = create(
        client,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": reference,
        },
        headers,
    )
    create(
        client,
        {
            "resourceType": "Condition",
            "subject": reference,
            "encounter": {"reference": f"Encounter/{encounter}"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code, "display": display}]},
            "recordedDate": "2024-03-01",
        },
        headers,
    )
    create(
        client,
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "subject": reference,
            "medicationCodeableConcept": {"text": "Metformina 850 mg"},
            "authoredOn": "2024-03-01",
        },
        headers,
    )


def _everything(client: TestClient, patient_id: str) -> list[str]:
    ids: list[str] = []
    url: str | None = f"/fhir/Patient/{patient_id}/$everything?_count=2"
    while url:
        page = client.get(url).json()
        ids.extend(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in page.get("entry", []))
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    return sorted(ids)


def test_referral_everything_and_summary_show_the_other_institution(client: TestClient) -> None:
    curp = "BAUM690216HMSLRG18"
    rural = create(client, patient("Bautista Uribe", "Miguel", "1969-02-16", curp), BIENESTAR)
    _encounter(client, rural, BIENESTAR, "E11.9", "Diabetes mellitus tipo 2")
    create(
        client,
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{rural}"},
            "code": {"text": "Referencia a medicina interna"},
        },
        BIENESTAR,
    )
    hospital = create(client, patient("Bautista", "Miguel", "1969-02-16", curp), ISSSTE)
    everything = client.get(f"/fhir/Patient/{hospital}/$everything").json()
    entries = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in everything["entry"]}
    kinds = {key.split("/")[0] for key in entries}
    assert {"Patient", "Encounter", "Condition", "MedicationRequest", "ServiceRequest"} <= kinds
    rural_source = "urn:ehr-core:source:IMSS-BIENESTAR:OCIMB000123"
    for kind in ("Encounter", "Condition", "MedicationRequest", "ServiceRequest"):
        recorded = [r for k, r in entries.items() if k.startswith(f"{kind}/")]
        assert recorded and all(r["meta"]["source"] == rural_source for r in recorded), kind
    assert entries[f"Patient/{hospital}"]["meta"]["source"] == "urn:ehr-core:source:ISSSTE:DFIST000312"
    # _type and _count paging
    only = client.get(f"/fhir/Patient/{hospital}/$everything?_type=Condition").json()
    assert [e["resource"]["resourceType"] for e in only["entry"]] == ["Condition"]
    assert len(_everything(client, hospital)) == len(entries)
    # _since: only what was written at or after the instant
    since = max(r["meta"]["lastUpdated"] for r in entries.values())
    recent = client.get(f"/fhir/Patient/{hospital}/$everything", params={"_since": since}).json()
    assert [e["resource"]["id"] for e in recent["entry"]] == [hospital]

    document = client.get(f"/fhir/Patient/{hospital}/$summary").json()
    assert document["type"] == "document"
    composition = document["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition"
    sections = {s["code"]["coding"][0]["code"]: s for s in composition["section"]}
    assert {"11450-4", "48765-2", "10160-0"} <= set(sections)
    assert (
        "E11.9" in sections["11450-4"]["text"]["div"]
        and "IMSS-BIENESTAR, OCIMB000123" in sections["11450-4"]["text"]["div"]
    )
    assert "Metformina" in sections["10160-0"]["text"]["div"]
    assert "emptyReason" in sections["48765-2"]
    included = {e["resource"]["resourceType"] for e in document["entry"]}
    assert {"Composition", "Patient", "Condition", "MedicationRequest"} <= included
    for entry in document["entry"][1:]:
        resource = entry["resource"]
        if resource["resourceType"] in ("Condition", "MedicationRequest"):
            assert resource["meta"]["source"] == rural_source
    assert document["entry"][1]["resource"]["id"] == hospital  # the subject: the ISSSTE record


def test_unlink_restores_both_records_everything_exactly(client: TestClient) -> None:
    # Without CURP these are only a possible match: two separate records, then a steward links them.
    a = create(client, patient("Hernández García", "María", "1985-07-14", sex="female"), IMSS)
    _encounter(client, a, IMSS, "I10", "Hipertensión esencial")
    b = create(client, patient("Hernandez", "Maria Guadalupe", "1985-07-17", sex="female"), ISSSTE)
    _encounter(client, b, ISSSTE, "O24.4", "Diabetes gestacional")
    before = {a: _everything(client, a), b: _everything(client, b)}
    assert not set(before[a]) & set(before[b])

    person_a = client.get(f"/fhir/Patient/{a}/$person").json()["id"]
    linked = client.post(
        f"/fhir/Patient/{b}/$link",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "other", "valueReference": {"reference": f"Patient/{a}"}}],
        },
        headers=STEWARD,
    )
    assert linked.status_code == 200, linked.text
    assert linked.json()["id"] == person_a
    merged = sorted(before[a] + before[b])
    assert _everything(client, a) == merged == _everything(client, b)
    assert client.get(f"/fhir/Patient/{a}").json()["link"] == [
        {"other": {"reference": f"Patient/{b}"}, "type": "seealso"}
    ]
    by = [ext for link in linked.json()["link"] for ext in link["extension"] if ext["url"].endswith("linked-by")]
    assert {"valueString": "steward.ana (data-steward)", "url": "urn:ehr-core:mpi:linked-by"} in by

    undone = client.post(f"/fhir/Patient/{b}/$unlink", headers=STEWARD)
    assert undone.status_code == 200, undone.text
    assert _everything(client, a) == before[a]
    assert _everything(client, b) == before[b]
    assert "link" not in client.get(f"/fhir/Patient/{a}").json()
    # An update of the record does not re-link it to the person a steward separated it from.
    current = client.get(f"/fhir/Patient/{b}").json()
    current["gender"] = "female"
    current["birthDate"] = "1985-07-14"
    assert client.put(f"/fhir/Patient/{b}", json=current, headers=ISSSTE).status_code == 200
    assert _everything(client, a) == before[a]
    assert client.post(f"/fhir/Patient/{b}/$unlink", headers=STEWARD).status_code == 422


def test_patients_written_in_a_transaction_are_matched_before_they_are_served(client: TestClient) -> None:
    curp = "ZUVM471127HOCTJG03"
    for n, caller in enumerate((IMSS, ISSSTE)):  # seealso joins records of *different* institutions
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {**patient("Zúñiga Vázquez", "Manuel", "1947-11-27", curp), "id": f"tx-{n}"},
                    "request": {"method": "PUT", "url": f"Patient/tx-{n}"},
                }
            ],
        }
        assert client.post("/fhir", json=bundle, headers=caller).status_code == 200
    served = client.get("/fhir/Patient/tx-0").json()
    assert served["link"] == [{"other": {"reference": "Patient/tx-1"}, "type": "seealso"}]
