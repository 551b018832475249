"""The official FHIR patch test vectors (fhir-test-cases, R4) run through ``ehr_core.resources.patch``.

* ``json-patch-tests.json``: RFC 6902 cases (doc, patch, expected or error), one test each.
* ``fhir-patch-tests.xml``: FHIRPath Patch cases whose resources are FHIR XML. They are converted to FHIR
  JSON by the small converter below, which knows only the elements these cases use (``ELEMENTS``) and
  stops with an error on any other, rather than guess whether it repeats or what JSON type it has.

The vectors are read from the shared corpus (``$EHR_CORPUS``, by default ``../shared/corpus`` next to the
repository) and never modified.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from ehr_core.resources import validation
from ehr_core.resources.json import JsonDecimal, dumps, loads
from ehr_core.resources.patch import PatchError, apply_fhirpath_patch, apply_json_patch
from fhir_api.errors import status_of

CORPUS = (
    Path(os.environ["EHR_CORPUS"])
    if os.environ.get("EHR_CORPUS")
    else Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
)
PATCH_VECTORS = CORPUS / "conformance" / "fhir-test-cases-r4" / "patch"
JSON_PATCH_FILE = PATCH_VECTORS / "json-patch-tests.json"
FHIR_PATCH_FILE = PATCH_VECTORS / "fhir-patch-tests.xml"


def canonical(value: Any) -> str:
    """Compare JSON strictly: ``true`` is not ``1``, and a decimal is compared by its text."""
    return json.dumps(value, sort_keys=True, default=lambda number: {"decimal": number.text})


def test_corpus_is_present() -> None:
    assert JSON_PATCH_FILE.is_file() and FHIR_PATCH_FILE.is_file(), (
        f"patch vectors not found under {PATCH_VECTORS}; set EHR_CORPUS to the shared corpus"
    )


# ---------------------------------------------------------------------------------------------------
# JSON Patch (RFC 6902)
# ---------------------------------------------------------------------------------------------------


def json_patch_cases() -> list[Any]:
    if not JSON_PATCH_FILE.is_file():
        return []
    cases = loads(JSON_PATCH_FILE.read_bytes())
    params = []
    for number, case in enumerate(cases):
        case_id = f"{number:02d}-" + re.sub(r"[^A-Za-z0-9]+", "-", case.get("comment", "case")).strip("-")
        marks = (
            [pytest.mark.skip(reason=f"disabled in the vectors: {case['disabled']}")] if case.get("disabled") else []
        )
        params.append(pytest.param(case, id=case_id, marks=marks))
    return params


@pytest.mark.parametrize("case", json_patch_cases())
def test_json_patch_vector(case: dict[str, Any]) -> None:
    before = canonical(case["doc"])
    if "error" in case:
        with pytest.raises(PatchError) as raised:
            apply_json_patch(case["doc"], case["patch"])
        # Every error case is a well-formed patch that does not apply to its document.
        assert status_of(raised.value) == 422, str(raised.value)
        assert raised.value.index is not None
        assert f"at index {raised.value.index}" in str(raised.value)
    else:
        assert canonical(apply_json_patch(case["doc"], case["patch"])) == canonical(case["expected"])
    assert canonical(case["doc"]) == before, "the input document was modified"


# ---------------------------------------------------------------------------------------------------
# FHIR XML -> FHIR JSON, for the elements the FHIRPath Patch vectors use
# ---------------------------------------------------------------------------------------------------

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"

# FHIR R4 primitive types, and how each is written in JSON (R4 §2.6.2.1): booleans and numbers as
# JSON literals, everything else as strings. Decimals keep their text, as the server's parser does.
PRIMITIVES = {
    "boolean": "bool",
    "integer": "int",
    "positiveInt": "int",
    "unsignedInt": "int",
    "decimal": "decimal",
    "string": "str",
    "code": "str",
    "id": "str",
    "uri": "str",
    "url": "str",
    "canonical": "str",
    "markdown": "str",
    "date": "str",
    "dateTime": "str",
    "instant": "str",
    "time": "str",
    "xhtml": "xhtml",
}

# From the R4 definitions (patient.html, datatypes.html, narrative.html, parameters.html): for every
# element the vectors use, its type and whether it repeats (max cardinality "*"). "extension" is
# handled for every type, and value[x] for the types in CHOICES.
ELEMENTS: dict[str, dict[str, tuple[str, bool]]] = {
    "Patient": {
        "id": ("id", False),
        "text": ("Narrative", False),
        "identifier": ("Identifier", True),
        "active": ("boolean", False),
        "name": ("HumanName", True),
        "telecom": ("ContactPoint", True),
        "gender": ("code", False),
        "birthDate": ("date", False),
        "deceasedBoolean": ("boolean", False),
        "address": ("Address", True),
        "maritalStatus": ("CodeableConcept", False),
        "contact": ("Patient.contact", True),
        "managingOrganization": ("Reference", False),
    },
    "Patient.contact": {
        "relationship": ("CodeableConcept", True),
        "name": ("HumanName", False),
        "telecom": ("ContactPoint", True),
        "address": ("Address", False),
        "gender": ("code", False),
        "period": ("Period", False),
    },
    "Narrative": {"status": ("code", False), "div": ("xhtml", False)},
    "Identifier": {
        "use": ("code", False),
        "type": ("CodeableConcept", False),
        "system": ("uri", False),
        "value": ("string", False),
        "period": ("Period", False),
        "assigner": ("Reference", False),
    },
    "CodeableConcept": {"coding": ("Coding", True), "text": ("string", False)},
    "Coding": {"system": ("uri", False), "code": ("code", False)},
    "Period": {"start": ("dateTime", False), "end": ("dateTime", False)},
    "Reference": {"reference": ("string", False), "display": ("string", False)},
    "HumanName": {
        "use": ("code", False),
        "text": ("string", False),
        "family": ("string", False),
        "given": ("string", True),
    },
    "ContactPoint": {"system": ("code", False), "value": ("string", False), "use": ("code", False)},
    "Address": {
        "use": ("code", False),
        "type": ("code", False),
        "line": ("string", True),
        "city": ("string", False),
        "district": ("string", False),
        "state": ("string", False),
        "postalCode": ("string", False),
        "period": ("Period", False),
    },
    "Extension": {},
    "Parameters": {"parameter": ("Parameters.parameter", True)},
    "Parameters.parameter": {"name": ("string", False), "part": ("Parameters.parameter", True)},
}
CHOICES = {"Extension", "Parameters.parameter"}  # types with a value[x] element


def child_definition(kind: str, name: str) -> tuple[str, bool]:
    """The type of element ``name`` of type ``kind`` and whether it repeats; KeyError if unknown."""
    if name in ("extension", "modifierExtension"):
        return "Extension", True
    if kind in CHOICES and name.startswith("value") and len(name) > len("value"):
        suffix = name[len("value") :]
        if suffix in ELEMENTS:
            return suffix, False
        primitive = suffix[0].lower() + suffix[1:]
        if primitive in PRIMITIVES:
            return primitive, False
    return ELEMENTS[kind][name]


def is_repeating(path: str) -> bool | None:
    """The cardinality lookup the engine needs (ehr_core.resources.patch.RepeatsLookup), from ELEMENTS."""
    kind, *names = path.split(".")
    repeats = None
    for name in names:
        try:
            kind, repeats = child_definition(kind, name)
        except KeyError:
            return None
    return repeats


def local_name(element: ET.Element, namespace: str = FHIR_NS) -> str:
    prefix = f"{{{namespace}}}"
    if not element.tag.startswith(prefix):
        raise ValueError(f"<{element.tag}> is not in the namespace {namespace}")
    return element.tag[len(prefix) :]


def resource_json(element: ET.Element) -> dict[str, Any]:
    kind = local_name(element)
    return {"resourceType": kind, **complex_json(element, kind)}


def complex_json(element: ET.Element, kind: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for attribute, value in element.attrib.items():
        if attribute == "id" or (attribute == "url" and kind == "Extension"):
            result[attribute] = value
        else:
            raise ValueError(f"unexpected attribute {attribute} on {kind}")
    groups: dict[str, list[ET.Element]] = {}
    for child in element:
        # Narrative.div is the one element outside the FHIR namespace (R4 §2.6.1 "XHTML").
        name = "div" if child.tag == f"{{{XHTML_NS}}}div" else local_name(child)
        groups.setdefault(name, []).append(child)
    for name, children in groups.items():
        try:
            child_type, repeats = child_definition(kind, name)
        except KeyError:
            raise ValueError(f"{kind}.{name} is not in the converter's ELEMENTS table") from None
        if len(children) > 1 and not repeats:
            raise ValueError(f"{kind}.{name} does not repeat but occurs {len(children)} times")
        if child_type in PRIMITIVES:
            pairs = [primitive_json(child, child_type) for child in children]
            values = [value for value, _ in pairs]
            extras = [extra for _, extra in pairs]
            if any(value is not None for value in values):
                result[name] = values if repeats else values[0]
            if any(extra is not None for extra in extras):
                result[f"_{name}"] = extras if repeats else extras[0]
        else:
            items = [complex_json(child, child_type) for child in children]
            result[name] = items if repeats else items[0]
    return result


def primitive_json(element: ET.Element, kind: str) -> tuple[Any, dict[str, Any] | None]:
    """A primitive's JSON value and its ``_name`` object (id and extensions), R4 §2.6.2.7."""
    if kind == "xhtml":
        return xhtml_text(element), None
    extra: dict[str, Any] = {}
    for attribute in element.attrib:
        if attribute not in ("value", "id"):
            raise ValueError(f"unexpected attribute {attribute} on a {kind}")
    if "id" in element.attrib:
        extra["id"] = element.attrib["id"]
    extensions = []
    for child in element:
        if local_name(child) != "extension":
            raise ValueError(f"a {kind} has a child <{local_name(child)}>")
        extensions.append(complex_json(child, "Extension"))
    if extensions:
        extra["extension"] = extensions
    text = element.get("value")
    return (None if text is None else primitive_value(text, kind)), (extra or None)


def primitive_value(text: str, kind: str) -> Any:
    json_type = PRIMITIVES[kind]
    if json_type == "bool":
        return {"true": True, "false": False}[text]
    if json_type == "int":
        return int(text)
    if json_type == "decimal":
        return JsonDecimal(text)
    return text


def xhtml_text(element: ET.Element, top: bool = True) -> str:
    """Narrative.div as FHIR JSON holds it: the XHTML as a string, with the XHTML namespace declared
    on the div (R4 §2.6.2 "xhtml"). Text is escaped as XML text: &, < and > only."""
    tag = local_name(element, XHTML_NS)
    attributes = "".join(f' {name}="{escape(value, quote=True)}"' for name, value in element.attrib.items())
    if top:
        attributes = f' xmlns="{XHTML_NS}"' + attributes
    inner = escape(element.text or "")
    for child in element:
        inner += xhtml_text(child, top=False) + escape(child.tail or "")
    return f"<{tag}{attributes}>{inner}</{tag}>"


def escape(text: str, quote: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if quote else text


# ---------------------------------------------------------------------------------------------------
# FHIRPath Patch (R4 fhirpatch.html)
# ---------------------------------------------------------------------------------------------------

# Cases this engine does not pass, by case name, each with the reason; marked xfail(strict=True), so a
# case that starts passing fails the run until it is taken off this list. None at present: all 33 pass.
FHIRPATH_PATCH_UNSUPPORTED: dict[str, str] = {}


def fhirpath_patch_cases() -> list[Any]:
    if not FHIR_PATCH_FILE.is_file():
        return []
    params = []
    for case in ET.parse(FHIR_PATCH_FILE).getroot().iter("case"):
        name = case.attrib["name"]
        marks = []
        if name in FHIRPATH_PATCH_UNSUPPORTED:
            marks.append(pytest.mark.xfail(strict=True, reason=FHIRPATH_PATCH_UNSUPPORTED[name]))
        params.append(pytest.param(case, id=re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-"), marks=marks))
    return params


def only_child(case: ET.Element, tag: str) -> ET.Element:
    (container,) = case.findall(tag)
    (element,) = list(container)
    return element


def test_fhirpath_patch_vector_count() -> None:
    # The corpus README promises 33 cases: a lost case must not pass unnoticed.
    assert len(fhirpath_patch_cases()) == 33


@pytest.mark.parametrize("case", fhirpath_patch_cases())
def test_fhirpath_patch_vector(case: ET.Element) -> None:
    # The engine is given the cardinality lookup, as the server must give it one: "Add Anonymous Type"
    # and "Operation on missing element #2" add the first contact / identifier, which must be arrays.
    resource = resource_json(only_child(case, "input"))
    parameters = resource_json(only_child(case, "diff"))
    before = canonical(resource)
    error = case.find("error")
    if error is not None:
        with pytest.raises(PatchError) as raised:
            apply_fhirpath_patch(resource, parameters, is_repeating=is_repeating)
        assert status_of(raised.value) == 422, str(raised.value)
        assert raised.value.index == 0
    else:
        expected = resource_json(only_child(case, "output"))
        result = apply_fhirpath_patch(resource, parameters, is_repeating=is_repeating)
        assert canonical(result) == canonical(expected)
    assert canonical(resource) == before, "the input resource was modified"


def test_converter_handles_primitive_extensions_and_types() -> None:
    """The converter itself, on the richest input of the vectors ("Full Resource")."""
    (case,) = [case for case in ET.parse(FHIR_PATCH_FILE).getroot().iter("case") if case.get("name") == "Full Resource"]
    patient = resource_json(only_child(case, "input"))
    assert patient["active"] is True and patient["deceasedBoolean"] is False
    assert patient["name"][0]["given"] == ["Peter", "James"]
    assert patient["_birthDate"]["extension"][0]["valueDateTime"] == "1974-12-25T14:35:45-05:00"
    assert patient["contact"][0]["name"]["_family"]["extension"][0]["valueString"] == "VV"
    assert patient["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    assert isinstance(patient["contact"], list) and isinstance(patient["contact"][0]["name"], dict)


# ---------------------------------------------------------------------------------------------------
# Decimal text survives a patch
# ---------------------------------------------------------------------------------------------------

OBSERVATION = b"""{"resourceType": "Observation", "status": "preliminary",
  "code": {"text": "glucose"}, "valueQuantity": {"value": 1.50, "unit": "mmol/L"},
  "component": [{"code": {"text": "x"}, "valueQuantity": {"value": 1.0E-7}}]}"""


def test_json_patch_keeps_decimal_text() -> None:
    observation = loads(OBSERVATION)
    patch = loads(b"""[{"op": "replace", "path": "/status", "value": "final"},
                       {"op": "test", "path": "/valueQuantity/value", "value": 1.5},
                       {"op": "copy", "from": "/valueQuantity/value", "path": "/component/0/valueQuantity/value"},
                       {"op": "add", "path": "/code/coding", "value": [{"code": "a", "version": 2.000}]}]""")
    result = dumps(apply_json_patch(observation, patch))
    assert b'"valueQuantity":{"value":1.50,"unit":"mmol/L"}' in result
    assert b'"component":[{"code":{"text":"x"},"valueQuantity":{"value":1.50}}]' in result
    assert b'"version":2.000' in result
    assert b'"status":"final"' in result
    assert dumps(observation) == dumps(loads(OBSERVATION))


def test_fhirpath_patch_keeps_decimal_text() -> None:
    observation = loads(OBSERVATION)
    parameters = loads(b"""{"resourceType": "Parameters", "parameter": [
      {"name": "operation", "part": [{"name": "type", "valueCode": "replace"},
        {"name": "path", "valueString": "Observation.status"}, {"name": "value", "valueCode": "final"}]},
      {"name": "operation", "part": [{"name": "type", "valueCode": "replace"},
        {"name": "path", "valueString": "Observation.component[0].value.value"},
        {"name": "value", "valueDecimal": 2.10}]}]}""")
    result = apply_fhirpath_patch(observation, parameters)
    assert result["status"] == "final"
    written = dumps(result)
    assert b'"valueQuantity":{"value":1.50,"unit":"mmol/L"}' in written
    assert b'"valueQuantity":{"value":2.10}' in written
    assert isinstance(result["valueQuantity"]["value"], JsonDecimal)


# ---------------------------------------------------------------------------------------------------
# Errors and behaviour the vectors do not cover
# ---------------------------------------------------------------------------------------------------


def operation(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"name": "operation", "part": list(parts)}


def patch_of(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(operations)}


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "name": [
        {"given": ["Ana", "María", "Luisa"], "_given": [None, {"extension": [{"url": "u", "valueCode": "x"}]}, None]}
    ],
    "birthDate": "1990-01-01",
    "_birthDate": {"extension": [{"url": "http://example.org/t", "valueTime": "10:00:00"}]},
}


@pytest.mark.parametrize(
    ("operations", "status", "index", "words"),
    [
        ({"op": "add"}, 400, None, "JSON array"),
        ([{"op": "add", "path": "/a"}], 400, 0, "no 'value' member"),
        ([{"op": "remove", "path": "/a"}, {"op": "jump", "path": "/a"}], 400, 1, "no valid 'op'"),
        ([{"op": "remove", "path": "a"}], 400, 0, "not a JSON Pointer"),
        ([{"op": "move", "from": "/name", "path": "/name/0/x"}], 400, 0, "its own children"),
        ([{"op": "remove", "path": "/name/0/given/7"}], 422, 0, "index 7 is beyond the end"),
        ([{"op": "remove", "path": "/birthDate"}, {"op": "remove", "path": "/birthDate"}], 422, 1, "does not exist"),
        ([{"op": "test", "path": "/birthDate", "value": "2000-01-01"}], 422, 0, "test failed"),
        ([{"op": "replace", "path": "", "value": [1]}], 422, None, "JSON object"),
    ],
)
def test_json_patch_errors(operations: Any, status: int, index: int | None, words: str) -> None:
    with pytest.raises(PatchError) as raised:
        apply_json_patch(PATIENT, operations)
    assert (status_of(raised.value), raised.value.index) == (status, index)
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("parameters", "status", "words"),
    [
        ({"resourceType": "Patient"}, 400, "must be a Parameters resource"),
        (patch_of({"name": "op"}), 400, "named 'operation'"),
        (patch_of(operation({"name": "path", "valueString": "Patient.x"})), 400, "without exactly one value[x]"),
        (
            patch_of(operation({"name": "type", "valueCode": "upsert"}, {"name": "path", "valueString": "Patient"})),
            400,
            "'upsert'",
        ),
        (
            patch_of(
                operation(
                    {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"}
                )
            ),
            400,
            "no 'value' part",
        ),
        (
            patch_of(
                operation({"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name)"})
            ),
            400,
            "not valid FHIRPath",
        ),
        (
            patch_of(
                operation(
                    {"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name.given"}
                )
            ),
            422,
            "matches 3 elements",
        ),
        (
            patch_of(
                operation(
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.gender"},
                    {"name": "value", "valueCode": "other"},
                )
            ),
            422,
            "no element matches",
        ),
        (
            patch_of(
                operation(
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "birthDate"},
                    {"name": "value", "valueDate": "2000-01-01"},
                )
            ),
            422,
            "already has a value",
        ),
        (
            patch_of(
                operation(
                    {"name": "type", "valueCode": "insert"},
                    {"name": "path", "valueString": "Patient.birthDate"},
                    {"name": "index", "valueInteger": 0},
                    {"name": "value", "valueDate": "2000-01-01"},
                )
            ),
            422,
            "does not select a list",
        ),
        (
            patch_of(
                operation(
                    {"name": "type", "valueCode": "move"},
                    {"name": "path", "valueString": "Patient.name.given"},
                    {"name": "source", "valueInteger": 3},
                    {"name": "destination", "valueInteger": 0},
                )
            ),
            422,
            "source 3 is not in the list",
        ),
        (
            patch_of(
                operation(
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.name.given.first()"},
                    {"name": "value", "valueString": "Eva"},
                )
            ),
            422,
            "primitive value through a function",
        ),
    ],
)
def test_fhirpath_patch_errors(parameters: dict[str, Any], status: int, words: str) -> None:
    with pytest.raises(PatchError) as raised:
        apply_fhirpath_patch(PATIENT, parameters)
    assert status_of(raised.value) == status
    assert words in str(raised.value)
    if status == 422:
        assert raised.value.index == 0 and "operation at index 0" in str(raised.value)


def test_fhirpath_patch_keeps_primitive_extensions_aligned() -> None:
    delete_first = operation(
        {"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name.given[0]"}
    )
    move = operation(
        {"name": "type", "valueCode": "move"},
        {"name": "path", "valueString": "Patient.name[0].given"},
        {"name": "source", "valueInteger": 0},
        {"name": "destination", "valueInteger": 1},
    )
    result = apply_fhirpath_patch(PATIENT, patch_of(delete_first, move))
    assert result["name"][0]["given"] == ["Luisa", "María"]
    assert result["name"][0]["_given"] == [None, {"extension": [{"url": "u", "valueCode": "x"}]}]


def test_fhirpath_patch_on_primitive_extensions() -> None:
    delete_extension = operation(
        {"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.birthDate.extension[0]"}
    )
    result = apply_fhirpath_patch(PATIENT, patch_of(delete_extension))
    assert "_birthDate" not in result and result["birthDate"] == "1990-01-01"  # no empty "_birthDate"
    add_extension = operation(
        {"name": "type", "valueCode": "add"},
        {"name": "path", "valueString": "Patient.name[0].given[0]"},
        {"name": "name", "valueString": "extension"},
        {"name": "value", "part": [{"name": "url", "valueUri": "v"}, {"name": "valueCode", "valueCode": "y"}]},
    )
    result = apply_fhirpath_patch(PATIENT, patch_of(add_extension))
    assert result["name"][0]["_given"][0] == {"extension": [{"url": "v", "valueCode": "y"}]}


def test_fhirpath_patch_delete_of_nothing_is_not_an_error() -> None:
    delete = operation({"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.gender"})
    assert apply_fhirpath_patch(PATIENT, patch_of(delete)) == PATIENT


r4b_is_repeating = validation.is_repeating


def element_paths(kind: str, path: str, depth: int = 0) -> list[str]:
    """Every element path the ELEMENTS table describes below ``kind`` (recursive types cut at depth 3)."""
    paths = []
    for name, (child_type, _) in ELEMENTS.get(kind, {}).items():
        paths.append(f"{path}.{name}")
        if depth < 3:
            paths.extend(element_paths(child_type, f"{path}.{name}", depth + 1))
    return paths


def test_converter_table_agrees_with_the_r4b_models() -> None:
    """The hand-written cardinalities (used to convert the XML and as the engine's lookup) are the
    models' own, for every element the table lists."""
    paths = element_paths("Patient", "Patient") + element_paths("Parameters", "Parameters")
    assert len(paths) > 50
    assert {path: is_repeating(path) for path in paths} == {path: r4b_is_repeating(path) for path in paths}


def test_fhirpath_patch_with_the_r4b_lookup() -> None:
    """What the server should pass as ``is_repeating``: without it, adding the first identifier would
    write a single object instead of an array."""
    add = operation(
        {"name": "type", "valueCode": "add"},
        {"name": "path", "valueString": "Patient"},
        {"name": "name", "valueString": "identifier"},
        {
            "name": "value",
            "valueIdentifier": {"system": "urn:oid:2.16.840.1.113883.4.629", "value": "SABC560626MDFLRN01"},
        },
    )
    add_contact = operation(
        {"name": "type", "valueCode": "add"},
        {"name": "path", "valueString": "Patient"},
        {"name": "name", "valueString": "contact"},
        {
            "name": "value",
            "part": [
                {"name": "name", "valueHumanName": {"text": "Rosa"}},
                {"name": "telecom", "valueContactPoint": {"value": "55"}},
            ],
        },
    )
    result = apply_fhirpath_patch(PATIENT, patch_of(add, add_contact), is_repeating=r4b_is_repeating)
    assert result["identifier"] == [{"system": "urn:oid:2.16.840.1.113883.4.629", "value": "SABC560626MDFLRN01"}]
    assert result["contact"] == [{"name": {"text": "Rosa"}, "telecom": [{"value": "55"}]}]
