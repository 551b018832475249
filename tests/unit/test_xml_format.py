"""The FHIR XML codec on every file of the HL7 R4 examples, and the choice of an answer's format.

Every example (message and response Bundles included, which the HTTP test leaves out) must survive JSON →
XML → JSON exactly, decimals with their text; the XML must be stable (writing what was read gives the same
bytes) and follow the R4 element order.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from ehr_core.resources import json as fhir_json
from ehr_core.resources.xml import from_xml, to_xml
from fhir_api.formats import negotiate
from tests.conftest import CORPUS
from tests.unit.test_patch_vectors import FHIR_PATCH_FILE, canonical, resource_json

EXAMPLES = CORPUS / "hl7-examples" / "r4-examples"


def _exact(body: bytes) -> Any:
    return json.loads(body, parse_float=lambda text: ("decimal", text))


def test_every_hl7_example_survives_json_to_xml_and_back() -> None:
    files = [path for path in sorted(EXAMPLES.glob("*.json")) if path.name != "package.json"]
    if not files:
        pytest.fail(f"HL7 examples not found at {EXAMPLES} (set EHR_CORPUS)")
    failures = []
    for path in files:
        raw = path.read_bytes()
        written = to_xml(fhir_json.loads(raw))
        read = from_xml(written)
        if _exact(fhir_json.dumps(read)) != _exact(raw):
            failures.append(f"{path.name}: JSON → XML → JSON differs")
        elif to_xml(read) != written:
            failures.append(f"{path.name}: XML → JSON → XML differs")
    assert len(files) == 716
    assert not failures, "\n".join(failures)


def test_xml_follows_the_definition_order_not_the_json_order() -> None:
    observation = {
        "valueQuantity": {"unit": "kg", "value": fhir_json.loads(b"1.50")},
        "status": "final",
        "code": {"text": "weight"},
        "resourceType": "Observation",
        "_status": {"id": "s"},
    }
    assert to_xml(observation).decode() == (
        '<?xml version="1.0" encoding="UTF-8"?><Observation xmlns="http://hl7.org/fhir">'
        '<status id="s" value="final"/><code><text value="weight"/></code>'
        '<valueQuantity><value value="1.50"/><unit value="kg"/></valueQuantity></Observation>'
    )


def test_attribute_values_keep_line_breaks_and_markup() -> None:
    patient = {"resourceType": "Patient", "name": [{"text": 'a\nb\t"c" <d> & e\r'}]}
    assert from_xml(to_xml(patient)) == patient


@pytest.mark.parametrize(
    ("accept", "format_parameter", "expected"),
    [
        (None, None, "json"),
        ("", None, "json"),
        ("*/*", None, "json"),
        ("application/*", None, "json"),
        ("application/fhir+xml", None, "xml"),
        ("application/xml+fhir", None, "xml"),
        ("text/xml", None, "xml"),
        ("application/json", None, "json"),
        ("application/fhir+json;q=0.5, application/fhir+xml", None, "xml"),
        ("application/fhir+xml;q=0.5, application/fhir+json", None, "json"),
        ("application/fhir+xml;q=0.8, */*", None, "json"),
        ("*/*;q=0.8, application/fhir+xml;q=0.8", None, "xml"),  # same q: the named type wins
        ("text/html, application/xml;q=0.9, */*;q=0.8", None, "xml"),
        ("application/fhir+xml;q=0", None, None),
        ("application/pdf", None, None),
        ("image/png, application/fhir+json;q=0.1", None, "json"),
        ("application/fhir+ndjson", None, "json"),  # an export's file: its own type, not refused
        ("application/fhir+xml", "json", "json"),  # _format overrides Accept
        ("application/fhir+json", "xml", "xml"),
        (None, "application/fhir+xml", "xml"),
        (None, "application/fhir+json; fhirVersion=4.0", "json"),
        (None, "text/xml", "xml"),
        (None, "html", None),
        ("application/fhir+xml; fhirVersion=4.0; q=0.9", None, "xml"),
        ("application/fhir+xml;q=abc, application/json;q=0.1", None, "json"),
    ],
)
def test_negotiate(accept: str | None, format_parameter: str | None, expected: str | None) -> None:
    assert negotiate(accept, format_parameter) == expected


def _tree(element: ET.Element) -> Any:
    """An XML element as (tag, attributes, children), whitespace-only text left out: what FHIR XML means."""
    text = (element.text or "").strip()
    children = [_tree(child) for child in element]
    return (element.tag, dict(element.attrib), text, children)


def _divs(value: Any) -> Any:
    """Narrative divs as element trees: this codec keeps the div's text verbatim, the test converter
    re-serialises it; both must hold the same XHTML."""
    if isinstance(value, dict):
        return {k: repr(_tree(ET.fromstring(v))) if k == "div" else _divs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_divs(item) for item in value]
    return value


def test_official_hl7_xml_reads_as_an_independent_reader_does_and_writes_back_the_same() -> None:
    """The HL7 FHIRPath Patch vectors hold FHIR XML written by HL7 (inputs, Parameters, outputs). Each must
    read into the JSON an independent reader gives (the test converter of test_patch_vectors.py), and be
    written back as the same element tree: the strongest check of element order and of attributes."""
    if not FHIR_PATCH_FILE.is_file():
        pytest.fail(f"{FHIR_PATCH_FILE} not found (set EHR_CORPUS)")
    # Each resource as HL7 wrote it (a re-serialised tree would name its namespaces differently).
    text = FHIR_PATCH_FILE.read_text(encoding="utf-8")
    resources = [m.group(0) for m in re.finditer(r'<([A-Z][A-Za-z]+) xmlns="http://hl7.org/fhir">.*?</\1>', text, re.S)]
    assert len(resources) >= 90
    for source in resources:
        official = ET.fromstring(source)
        read = from_xml(source.encode("utf-8"))
        assert canonical(_divs(read)) == canonical(_divs(resource_json(official))), source[:300]
        assert _tree(ET.fromstring(to_xml(read))) == _tree(official), source[:300]
