"""FHIR XML over HTTP (R4 xml.html, http.html#mime), on every backend.

The HL7 R4 examples are written as XML (the XML the server's own serialiser gives for each JSON file: the
corpus holds no official XML) and read back both ways: as JSON, equal to the file except the server's meta;
as XML, equal to what was written except the server's meta. A Synthea transaction Bundle sent as XML is
processed like its JSON twin. Hostile XML (external entities, entity expansion, absurd nesting) is a 400
with flat memory, and content negotiation follows Accept's q-values, ``_format`` and 406.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from ehr_core.importing import Importer
from ehr_core.resources import json as fhir_json
from ehr_core.resources.xml import XmlError, from_xml, to_xml
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.resolver import ViewResolver
from fhir_api.services import Services
from tests.conftest import CORPUS, DEV_AUTH
from tests.integration.test_hl7_examples import (
    EXPECTED_FILES,
    EXPECTED_REJECTED,
    Example,
    _difference,
    _exact,
    _load_examples,
    _without_server_meta,
)

XML = {"content-type": "application/fhir+xml"}
ACCEPT_XML = {"accept": "application/fhir+xml"}
ACCEPT_JSON = {"accept": "application/fhir+json"}
SYNTHEA = CORPUS / "synthea" / "smart-r4-2019"


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    if not (CORPUS / "hl7-examples" / "r4-examples").is_dir():
        pytest.fail(f"HL7 examples not found under {CORPUS} (set EHR_CORPUS)")
    return _load_examples()


def _is_xml(response: Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/fhir+xml")


def _xml_outcome(response: Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert _is_xml(response), response.headers.get("content-type")
    outcome = from_xml(response.content)
    assert outcome["resourceType"] == "OperationOutcome"
    return outcome


@pytest.mark.slow
def test_hl7_examples_written_as_xml_read_back_as_json_and_xml(client: TestClient, examples: list[Example]) -> None:
    assert len(examples) == EXPECTED_FILES
    failures: list[str] = []
    accepted = rejected = 0
    for example in examples:
        sent = fhir_json.loads(example.raw)
        written = to_xml(sent)
        if example.resource_id is not None:
            url = f"/fhir/{example.resource_type}/{example.resource_id}"
            response = client.put(url, content=written, headers=XML | ACCEPT_XML)
        else:
            response = client.post(f"/fhir/{example.resource_type}", content=written, headers=XML | ACCEPT_XML)
        name = example.path.name
        if response.status_code >= 500:
            failures.append(f"{name}: write answered {response.status_code} {response.text[:200]}")
            continue
        if not example.accepted:
            if 400 <= response.status_code < 500 and _is_xml(response):
                rejected += 1
            else:
                failures.append(f"{name}: R4B rejects it, the XML write answered {response.status_code}")
            continue
        if response.status_code not in (200, 201) or not _is_xml(response):
            failures.append(f"{name}: XML write answered {response.status_code} {response.text[:300]}")
            continue
        accepted += 1
        resource_id = example.resource_id or from_xml(response.content)["id"]
        url = f"/fhir/{example.resource_type}/{resource_id}"
        as_json = client.get(url, headers=ACCEPT_JSON)
        expected = _without_server_meta(_exact(example.raw))
        if example.resource_id is None:
            expected = {**expected, "id": resource_id}
        difference = _difference(expected, _without_server_meta(_exact(as_json.content)))
        if difference:
            failures.append(f"{name}: read as JSON differs from the file: {difference}")
        as_xml = client.get(url, headers=ACCEPT_XML)
        if not _is_xml(as_xml):
            failures.append(f"{name}: read with Accept XML answered {as_xml.headers.get('content-type')}")
            continue
        # What was written, less what the server sets: meta.versionId/lastUpdated (and the id it assigned).
        read = _without_server_meta(from_xml(as_xml.content))
        if example.resource_id is None:
            read = {key: value for key, value in read.items() if key != "id"}
        if to_xml(read) != to_xml(_without_server_meta(sent)):
            failures.append(f"{name}: read as XML differs from what was written")
    summary = f"{len(examples)} examples as XML: {accepted} stored and read back, {rejected} refused"
    print(summary)
    assert not failures, f"{len(failures)} failures ({summary}):\n" + "\n".join(failures)
    assert (accepted, rejected) == (EXPECTED_FILES - EXPECTED_REJECTED, EXPECTED_REJECTED), summary


def _smallest_synthea() -> Path:
    files = sorted(SYNTHEA.glob("*.json"), key=lambda path: path.stat().st_size)
    if not files:
        pytest.fail(f"Synthea bundles not found at {SYNTHEA} (set EHR_CORPUS)")
    return files[0]


def _created(client: TestClient, response: Response) -> list[dict[str, Any]]:
    """The resources a transaction created, in entry order, read back as JSON."""
    bundle = from_xml(response.content) if _is_xml(response) else fhir_json.loads(response.content)
    assert bundle["type"] == "transaction-response"
    resources = []
    for entry in bundle["entry"]:
        assert entry["response"]["status"].startswith("201"), entry["response"]
        location = entry["response"]["location"].split("/_history/")[0]
        read = client.get(f"/fhir/{location}", headers=ACCEPT_JSON)
        assert read.status_code == 200, read.text[:300]
        resources.append(fhir_json.loads(read.content))
    return resources


def _by_position(resources: list[dict[str, Any]]) -> list[Any]:
    """The resources less id and meta, each reference to one of them replaced by its position."""
    positions = {f"{r['resourceType']}/{r['id']}": f"#{i}" for i, r in enumerate(resources)}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: positions.get(item, item) if key == "reference" else walk(item)
                for key, item in value.items()
                if key not in ("id", "meta")
            }
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return [walk(resource) for resource in resources]


def test_transaction_bundle_in_xml_is_processed_like_its_json_twin(client: TestClient) -> None:
    raw = _smallest_synthea().read_bytes()
    bundle = fhir_json.loads(raw)
    as_xml = client.post("/fhir", content=to_xml(bundle), headers=XML | ACCEPT_XML)
    assert as_xml.status_code == 200, as_xml.text[:500]
    as_json = client.post("/fhir", content=raw, headers={"content-type": "application/fhir+json"})
    assert as_json.status_code == 200, as_json.text[:500]
    from_xml_body, from_json_body = _created(client, as_xml), _created(client, as_json)
    assert len(from_xml_body) == len(bundle["entry"])
    assert _by_position(from_xml_body) == _by_position(from_json_body)


# --- hostile XML ------------------------------------------------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Patient [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&secret;"/></name></Patient>"""

LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&lol9;"/></name></Patient>"""

DEEP = (
    b'<Patient xmlns="http://hl7.org/fhir">'
    + b'<extension url="http://example.org/x">' * 10_000
    + b"</extension>" * 10_000
    + b"</Patient>"
)


@pytest.mark.parametrize(
    ("body", "named"),
    [(XXE, "DTD"), (LAUGHS, "DTD"), (DEEP, "deeper than the limit of 100")],
    ids=["external-entity", "billion-laughs", "10000-deep"],
)
def test_hostile_xml_is_refused_with_flat_memory(client: TestClient, body: bytes, named: str) -> None:
    tracemalloc.start()
    try:
        response = client.post("/fhir/Patient", content=body, headers=XML | ACCEPT_XML)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outcome = _xml_outcome(response, 400)
    diagnostics = outcome["issue"][0]["diagnostics"]
    assert named in diagnostics and "line " in diagnostics
    assert "root:" not in response.text  # nothing of the external entity came back
    # Billion laughs expanded is ~3 GB; refused before expansion, the request stays far below 50 MB.
    assert peak < 50 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert client.get("/fhir/Patient", headers=ACCEPT_JSON).json()["total"] == 0


def test_malformed_xml_is_a_400_naming_the_line(client: TestClient) -> None:
    body = b'<Patient xmlns="http://hl7.org/fhir">\n  <active value="true"/>\n  <name>\n</Patient>'
    outcome = _xml_outcome(client.post("/fhir/Patient", content=body, headers=XML | ACCEPT_XML), 400)
    assert "line 4" in outcome["issue"][0]["diagnostics"]
    # Asked in JSON (or not asked), the same refusal comes as JSON.
    response = client.post("/fhir/Patient", content=body, headers=XML)
    assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"
    unknown = b'<Patient xmlns="http://hl7.org/fhir"><colour value="blue"/></Patient>'
    assert (
        "colour"
        in _xml_outcome(client.post("/fhir/Patient", content=unknown, headers=XML | ACCEPT_XML), 400)["issue"][0][
            "diagnostics"
        ]
    )


@pytest.fixture
def small_body_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "ehr-data", auth=DEV_AUTH, max_body_bytes=2_000)
    services = Services.open(settings)
    try:
        with TestClient(create_app(services=services)) as test_client:
            yield test_client
    finally:
        services.close()


def test_xml_body_over_the_limit_is_413_like_json(small_body_client: TestClient) -> None:
    patient = {"resourceType": "Patient", "name": [{"family": "x" * 3_000}]}
    response = small_body_client.post("/fhir/Patient", content=to_xml(patient), headers=XML | ACCEPT_XML)
    _xml_outcome(response, 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        yield to_xml(patient)

    response = small_body_client.post("/fhir/Patient", content=chunks(), headers=XML | ACCEPT_XML)
    _xml_outcome(response, 413)


# --- the JSON form kept, and content negotiation -------------------------------------------------------------

PATIENT_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <id value="xml-1"/>
  <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>Ana <b>G\xc3\xb3mez</b></p></div></text>
  <extension url="http://example.org/weight">
    <valueQuantity><value value="70.50"/><unit value="kg"/></valueQuantity>
  </extension>
  <active value="true"/>
  <name>
    <family value="G\xc3\xb3mez"/>
    <given value="Ana"/>
    <given><extension url="http://example.org/absent"><valueCode value="unknown"/></extension></given>
    <given id="g3" value="Luisa"/>
  </name>
  <birthDate value="1980-02-03">
    <extension url="http://example.org/time"><valueDateTime value="1980-02-03T10:00:00-06:00"/></extension>
  </birthDate>
  <multipleBirthInteger value="2"/>
  <managingOrganization><reference value="#org"/></managingOrganization>
  <contained><Organization><id value="org"/><name value="IMSS"/></Organization></contained>
</Patient>"""


def test_xml_write_is_kept_as_its_json_form(client: TestClient) -> None:
    written = client.put("/fhir/Patient/xml-1", content=PATIENT_XML, headers=XML)
    assert written.status_code == 201, written.text
    stored = _exact(client.get("/fhir/Patient/xml-1", headers=ACCEPT_JSON).content)
    assert stored["active"] is True and stored["multipleBirthInteger"] == 2
    assert stored["extension"][0]["valueQuantity"]["value"] == ("decimal", "70.50")
    assert stored["name"][0]["given"] == ["Ana", None, "Luisa"]
    assert stored["name"][0]["_given"] == [
        None,
        {"extension": [{"url": "http://example.org/absent", "valueCode": "unknown"}]},
        {"id": "g3"},
    ]
    assert stored["_birthDate"]["extension"][0]["valueDateTime"] == "1980-02-03T10:00:00-06:00"
    assert stored["contained"] == [{"resourceType": "Organization", "id": "org", "name": "IMSS"}]
    assert stored["text"]["div"] == '<div xmlns="http://www.w3.org/1999/xhtml"><p>Ana <b>Gómez</b></p></div>'
    # And back to XML, the div as it was sent, the decimal with its text.
    as_xml = client.get("/fhir/Patient/xml-1", params={"_format": "xml"})
    assert _is_xml(as_xml)
    assert '<div xmlns="http://www.w3.org/1999/xhtml"><p>Ana <b>Gómez</b></p></div>' in as_xml.text
    assert '<value value="70.50"/>' in as_xml.text
    # Found by search like any JSON write (the search index sees the JSON form).
    assert client.get("/fhir/Patient", params={"family": "gomez"}).json()["total"] == 1


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({}, {}, "application/fhir+json"),
        ({"accept": "*/*"}, {}, "application/fhir+json"),
        ({"accept": "application/fhir+xml"}, {}, "application/fhir+xml"),
        ({"accept": "application/xml"}, {}, "application/fhir+xml"),
        ({"accept": "text/xml"}, {}, "application/fhir+xml"),
        ({"accept": "application/fhir+json;q=0.5, application/fhir+xml;q=0.9"}, {}, "application/fhir+xml"),
        ({"accept": "application/fhir+xml;q=0.4, application/json"}, {}, "application/fhir+json"),
        ({"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}, {}, "application/fhir+xml"),
        ({"accept": "application/fhir+xml"}, {"_format": "json"}, "application/fhir+json"),
        ({}, {"_format": "xml"}, "application/fhir+xml"),
        ({}, {"_format": "application/fhir+xml"}, "application/fhir+xml"),
        ({}, {"_format": "text/xml"}, "application/fhir+xml"),
    ],
)
def test_answer_format_follows_accept_and_format(
    client: TestClient, headers: dict[str, str], query: dict[str, str], expected: str
) -> None:
    client.put("/fhir/Patient/n1", json={"resourceType": "Patient", "id": "n1"})
    for url in ("/fhir/Patient/n1", "/fhir/Patient", "/fhir/Patient/n1/_history", "/fhir/metadata"):
        response = client.get(url, params=query, headers=headers)
        assert response.status_code == 200, (url, response.text[:300])
        assert response.headers["content-type"].startswith(expected), (url, response.headers["content-type"])
    # Errors come in the format asked for too.
    missing = client.get("/fhir/Patient/missing", params=query, headers=headers)
    assert missing.status_code == 404 and missing.headers["content-type"].startswith(expected)


@pytest.mark.parametrize(
    ("headers", "query"),
    [({"accept": "application/pdf"}, {}), ({"accept": "application/fhir+xml;q=0"}, {}), ({}, {"_format": "html"})],
)
def test_a_format_the_server_cannot_produce_is_406(
    client: TestClient, headers: dict[str, str], query: dict[str, str]
) -> None:
    response = client.get("/fhir/Patient", params=query, headers=headers)
    assert response.status_code == 406
    assert response.json()["resourceType"] == "OperationOutcome"


def test_binary_reads_keep_their_native_content(client: TestClient) -> None:
    created = client.post("/fhir/Binary", content=b"%PDF-1.4 x", headers={"content-type": "application/pdf"})
    assert created.status_code == 201, created.text
    binary_id = created.headers["location"].split("/")[5]
    native = client.get(f"/fhir/Binary/{binary_id}", headers={"accept": "application/pdf"})
    assert native.status_code == 200 and native.content == b"%PDF-1.4 x"
    resource = client.get(f"/fhir/Binary/{binary_id}", headers=ACCEPT_XML)
    assert _is_xml(resource) and from_xml(resource.content)["contentType"] == "application/pdf"
    # A FHIR XML Binary is a resource; a generic XML body is a Binary's own content (R4 binary.html).
    as_resource = to_xml({"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="})
    assert client.post("/fhir/Binary", content=as_resource, headers=XML).json()["data"] == "aGk="
    document = b"<ClinicalDocument/>"
    stored = client.post("/fhir/Binary", content=document, headers={"content-type": "application/xml"})
    assert stored.status_code == 201 and stored.json()["contentType"] == "application/xml"


def test_parameters_in_xml(client: TestClient) -> None:
    """An operation's Parameters body in XML, and its answer in XML."""
    client.put("/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    parameters = to_xml({"resourceType": "Parameters", "parameter": [{"name": "_count", "valueInteger": 5}]})
    response = client.post("/fhir/Patient/p1/$everything", content=parameters, headers=XML | ACCEPT_XML)
    assert response.status_code == 200 and _is_xml(response), response.text[:300]
    bundle = from_xml(response.content)
    assert bundle["resourceType"] == "Bundle" and bundle["entry"][0]["resource"]["id"] == "p1"


def test_codec_refuses_what_is_not_fhir_xml() -> None:
    with pytest.raises(XmlError, match="namespace"):
        from_xml(b'<Patient><id value="x"/></Patient>')
    with pytest.raises(XmlError, match="UTF-8"):
        from_xml(b'<?xml version="1.0" encoding="ISO-8859-1"?><Patient xmlns="http://hl7.org/fhir"/>')
    with pytest.raises(XmlError, match="true or false"):
        from_xml(b'<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>')
    with pytest.raises(XmlError, match="unknown attribute"):
        from_xml(b'<Patient xmlns="http://hl7.org/fhir"><active value="true" colour="x"/></Patient>')
    schema = b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir p.xsd"'
    assert from_xml(b'<Patient xmlns="http://hl7.org/fhir" ' + schema + b"/>") == {"resourceType": "Patient"}
    with pytest.raises(XmlError, match="only once"):
        from_xml(b'<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><gender value="male"/></Patient>')


def test_ehr_import_reads_xml_bundles(services: Services, tmp_path: Path) -> None:
    """``ehr import`` (ehr_core.importing) takes XML Bundle files beside JSON ones, batch files first."""
    directory = tmp_path / "xml"
    directory.mkdir()
    transaction = fhir_json.loads(_smallest_synthea().read_bytes())
    (directory / "a-transaction.xml").write_bytes(to_xml(transaction))
    organization = {"resourceType": "Organization", "name": "IMSS"}
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": organization, "request": {"method": "POST", "url": "Organization"}}],
    }
    (directory / "b-batch.xml").write_bytes(to_xml(batch))
    files = Importer.sources([directory])
    assert [path.name for path in files] == ["b-batch.xml", "a-transaction.xml"]
    report = Importer(services.application, ViewResolver(services), lambda _: None).run(files)
    assert report.files == 2 and report.rejected == [] and report.deferred == []
    assert report.stored == len(transaction["entry"]) + 1
    assert report.stored_by_type["Patient"] == 1 and report.stored_by_type["Organization"] >= 1

    broken = tmp_path / "broken.xml"
    broken.write_bytes(b'<Bundle xmlns="http://hl7.org/fhir">\n<type value="batch">\n</Bundle>')
    refused = Importer(services.application, ViewResolver(services), lambda _: None).run([broken])
    assert len(refused.rejected) == 1 and "line 3" in refused.rejected[0].reason
