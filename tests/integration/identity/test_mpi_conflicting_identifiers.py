"""The master patient index never joins two people on name and birth date, on SQLite and PostgreSQL.

Wrongly linking two people shows one patient's allergies, results and medicines as another's, so a link
made without a certain CURP match needs agreement beyond name and birth date and no conflicting identifier
(same system, different value: two record numbers of one institution, two CURPs, two NSS). Anything less is a
possible match in the review queue (``Person/$review``), for a data steward to decide.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

CURP = "urn:oid:2.16.840.1.113883.4.629"
NSS = "urn:ehr-core:sid:imss-nss"
IMSS_MRN = "urn:ehr-core:sid:imss:mrn"
ISSSTE_MRN = "urn:ehr-core:sid:issste:mrn"
IMSS = {"X-EHR-Institution": "IMSS", "X-EHR-Unit": "DFIMS000020", "X-EHR-User": "dr.perez"}
ISSSTE = {"X-EHR-Institution": "ISSSTE", "X-EHR-Unit": "DFIST000312", "X-EHR-User": "dr.ruiz"}
STEWARD = {"X-EHR-User": "steward.ana", "X-EHR-Role": "data-steward"}
BIRTH_PLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"


def carmen(*identifiers: tuple[str, str], state: str | None = None) -> dict[str, Any]:
    """Carmen Salas Bravo, born 1956-06-26: the same name, sex and birth date on every record."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": "Salas Bravo", "given": ["Carmen"]}],
        "gender": "female",
        "birthDate": "1956-06-26",
    }
    if identifiers:
        resource["identifier"] = [{"system": system, "value": value} for system, value in identifiers]
    if state:
        resource["extension"] = [{"url": BIRTH_PLACE, "valueAddress": {"state": state, "country": "MX"}}]
    return resource


def create(client: TestClient, resource: dict[str, Any], headers: dict[str, str]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def person_records(client: TestClient, patient_id: str) -> set[str]:
    person = client.get(f"/fhir/Patient/{patient_id}/$person")
    assert person.status_code == 200, person.text
    return {link["target"]["reference"] for link in person.json()["link"]}


def everything_patients(client: TestClient, patient_id: str) -> set[str]:
    bundle = client.get(f"/fhir/Patient/{patient_id}/$everything?_type=Patient").json()
    return {entry["resource"]["id"] for entry in bundle.get("entry", [])}


def review_pairs(client: TestClient) -> set[str]:
    """The records waiting in the steward's review queue."""
    queue = client.get("/fhir/Person/$review").json()
    return {
        part["valueReference"]["reference"]
        for item in queue.get("parameter", [])
        for part in item["part"]
        if part["name"] == "record"
    }


def assert_separate_and_queued(client: TestClient, a: str, b: str) -> None:
    assert person_records(client, a) == {f"Patient/{a}"}
    assert person_records(client, b) == {f"Patient/{b}"}
    assert "link" not in client.get(f"/fhir/Patient/{a}").json()
    assert "link" not in client.get(f"/fhir/Patient/{b}").json()
    assert everything_patients(client, a) == {a}
    assert everything_patients(client, b) == {b}
    assert f"Patient/{b}" in review_pairs(client)


def assert_linked(client: TestClient, a: str, b: str) -> None:
    assert person_records(client, a) == {f"Patient/{a}", f"Patient/{b}"} == person_records(client, b)
    assert everything_patients(client, a) == {a, b}


def test_two_mrns_of_one_institution_with_one_name_and_birth_date_are_not_merged(client: TestClient) -> None:
    """The reported case: one institution, two record numbers, same name and birth date, no CURP."""
    a = create(client, carmen((IMSS_MRN, "1001")), IMSS)
    b = create(client, carmen((IMSS_MRN, "1002")), IMSS)
    assert_separate_and_queued(client, a, b)


def test_two_mrns_of_one_institution_block_the_link_even_with_sex_and_state_agreeing(client: TestClient) -> None:
    a = create(client, carmen((IMSS_MRN, "2001"), state="DF"), IMSS)
    b = create(client, carmen((IMSS_MRN, "2002"), state="DF"), IMSS)
    assert_separate_and_queued(client, a, b)


def test_name_and_birth_date_alone_across_institutions_go_to_review(client: TestClient) -> None:
    a = create(client, carmen((IMSS_MRN, "3001")), IMSS)
    b = create(client, carmen((ISSSTE_MRN, "77")), ISSSTE)
    assert_separate_and_queued(client, a, b)


def test_name_birth_date_sex_and_state_across_institutions_link(client: TestClient) -> None:
    """Strong agreement and no conflicting identifier: a probable match, linked automatically."""
    a = create(client, carmen((IMSS_MRN, "4001"), state="DF"), IMSS)
    b = create(client, carmen((ISSSTE_MRN, "78"), state="Ciudad de México"), ISSSTE)
    assert_linked(client, a, b)


def test_different_curps_with_one_name_and_birth_date_are_not_merged(client: TestClient) -> None:
    a = create(client, carmen((CURP, "SABC560626MDFLRN01"), (IMSS_MRN, "5001")), IMSS)
    b = create(client, carmen((CURP, "SABC560626MDFLRS03"), (ISSSTE_MRN, "79")), ISSSTE)
    assert_separate_and_queued(client, a, b)


def test_different_nss_with_otherwise_strong_agreement_are_not_merged(client: TestClient) -> None:
    a = create(client, carmen((NSS, "84966311213"), (IMSS_MRN, "6001"), state="DF"), IMSS)
    b = create(client, carmen((NSS, "12345678903"), (ISSSTE_MRN, "80"), state="DF"), ISSSTE)
    assert_separate_and_queued(client, a, b)


def test_one_curp_and_none_on_name_and_birth_date_alone_go_to_review(client: TestClient) -> None:
    a = create(client, carmen((CURP, "SABC560626MDFLRN01"), (IMSS_MRN, "7001")), IMSS)
    b = create(client, carmen((ISSSTE_MRN, "81")), ISSSTE)
    assert_separate_and_queued(client, a, b)


def test_one_curp_and_none_with_the_state_of_birth_agreeing_link(client: TestClient) -> None:
    # The CURP says born in DF (Mexico City), female; the other record says the same.
    a = create(client, carmen((CURP, "SABC560626MDFLRN01"), (IMSS_MRN, "8001")), IMSS)
    b = create(client, carmen((ISSSTE_MRN, "82"), state="DF"), ISSSTE)
    assert_linked(client, a, b)


def test_a_shared_nss_corroborates_name_and_birth_date(client: TestClient) -> None:
    a = create(client, carmen((NSS, "01878501012"), (IMSS_MRN, "9001")), IMSS)
    b = create(client, carmen((NSS, "01878501012"), (ISSSTE_MRN, "83")), ISSSTE)
    assert_linked(client, a, b)


def test_a_stewards_link_over_conflicting_mrns_stays_when_a_record_changes(client: TestClient) -> None:
    """A duplicate registration at one institution is for a steward to merge; the index keeps the decision."""
    a = create(client, carmen((IMSS_MRN, "9101")), IMSS)
    b = create(client, carmen((IMSS_MRN, "9102")), IMSS)
    assert_separate_and_queued(client, a, b)
    linked = client.post(
        f"/fhir/Patient/{b}/$link",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "other", "valueReference": {"reference": f"Patient/{a}"}}],
        },
        headers=STEWARD,
    )
    assert linked.status_code == 200, linked.text
    assert_linked(client, a, b)
    current = client.get(f"/fhir/Patient/{b}").json()
    current["telecom"] = [{"system": "phone", "value": "555-0102"}]
    assert client.put(f"/fhir/Patient/{b}", json=current, headers=IMSS).status_code == 200
    assert_linked(client, a, b)
