"""Profiles written with only a differential (R4 profiling.html#snapshot) on every backend: the snapshot is
generated against the base, a core definition or a profile stored here, and its constraints apply to the
resources claiming the profile and to ``$validate?profile=``: cardinality, fixed and pattern values, type
narrowing, bindings (extensible ones as warnings), added FHIRPath constraints, must-support (information),
slicing by value, pattern and type (closed slicing refusing the unmatched). A differential that widens its
base, names an element the base lacks, or names an unknown base is refused when written.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

FHIR = {"content-type": "application/fhir+json"}
BASE = "http://example.org/fhir/StructureDefinition/"
CORE = "http://hl7.org/fhir/StructureDefinition/"
LOINC = "http://loinc.org"
MRN = "urn:example:mrn"
NSS = "urn:example:nss"


def _profile(name: str, resource_type: str, elements: list[dict[str, Any]], base: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "id": name,
        "url": BASE + name,
        "name": name,
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": resource_type,
        "baseDefinition": base or CORE + resource_type,
        "derivation": "constraint",
        "differential": {"element": elements},
    }


def _put(client: TestClient, profile: dict[str, Any]) -> Any:
    return client.put(f"/fhir/StructureDefinition/{profile['id']}", json=profile, headers=FHIR)


def _validate(client: TestClient, resource: dict[str, Any], profile: str) -> list[dict[str, Any]]:
    answer = client.post(f"/fhir/{resource['resourceType']}/$validate?profile={profile}", json=resource, headers=FHIR)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["issue"])


def _by_severity(issues: list[dict[str, Any]], severity: str) -> list[tuple[str, str]]:
    return [(i.get("expression", [""])[0], i["diagnostics"]) for i in issues if i["severity"] == severity]


def _claiming(resource: dict[str, Any], profile: str) -> dict[str, Any]:
    return {**resource, "meta": {"profile": [profile]}}


def _identified_patient() -> dict[str, Any]:
    """A base profile: an MRN slice of the identifiers (by system), required and must-support."""
    return _profile(
        "IdentifiedPatient",
        "Patient",
        [
            {
                "id": "Patient.identifier",
                "path": "Patient.identifier",
                "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "open"},
            },
            {"id": "Patient.identifier:mrn", "path": "Patient.identifier", "sliceName": "mrn", "min": 1, "max": "1"},
            {"id": "Patient.identifier:mrn.system", "path": "Patient.identifier.system", "fixedUri": MRN},
            {"id": "Patient.identifier:mrn.value", "path": "Patient.identifier.value", "min": 1},
            {"id": "Patient.birthDate", "path": "Patient.birthDate", "mustSupport": True},
        ],
    )


def test_a_profile_on_a_stored_profile_carries_the_base_profiles_constraints(client: TestClient) -> None:
    derived = _profile(
        "ReachablePatient",
        "Patient",
        [
            {
                "id": "Patient.telecom",
                "path": "Patient.telecom",
                "min": 1,
                "constraint": [
                    {"key": "reach-1", "severity": "error", "human": "a phone", "expression": "system = 'phone'"}
                ],
            }
        ],
        base=BASE + "IdentifiedPatient",
    )
    refused = _put(client, derived)  # its base is not known yet: no snapshot can be generated
    assert refused.status_code == 400, refused.text
    assert "IdentifiedPatient" in refused.json()["issue"][0]["diagnostics"], refused.text
    assert _put(client, _identified_patient()).status_code == 201
    assert _put(client, derived).status_code == 201
    url = BASE + "ReachablePatient"
    good = {
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": "77"}],
        "telecom": [{"system": "phone", "value": "555"}],
    }
    assert client.post("/fhir/Patient", json=_claiming(good, url), headers=FHIR).status_code == 201
    issues = _validate(client, good, url)
    assert _by_severity(issues, "error") == [], issues
    # The base profile's must-support element, absent: information.
    assert [where for where, _ in _by_severity(issues, "information")] == ["Patient.birthDate"], issues
    broken = {
        "no MRN (the base profile's slice, min 1)": (
            {**good, "identifier": [{"system": NSS, "value": "1"}]},
            "required",
        ),
        "two MRNs (the slice's max 1)": (
            {**good, "identifier": [{"system": MRN, "value": "1"}, {"system": MRN, "value": "2"}]},
            "structure",
        ),
        "no telecom (the profile's own min 1)": ({k: v for k, v in good.items() if k != "telecom"}, "required"),
        "an email (reach-1)": ({**good, "telecom": [{"system": "email", "value": "a@b.mx"}]}, "invariant"),
    }
    for what, (resource, code) in broken.items():
        answer = client.post("/fhir/Patient", json=_claiming(resource, url), headers=FHIR)
        assert answer.status_code == 400, (what, answer.text)
        assert [i["code"] for i in answer.json()["issue"]] == [code], (what, answer.text)
        assert len(_by_severity(_validate(client, resource, url), "error")) == 1, what


def test_a_differential_that_does_not_constrain_its_base_is_refused(client: TestClient) -> None:
    broken = {
        "max above the base's": [{"id": "Patient.gender", "path": "Patient.gender", "max": "2"}],
        "min above max": [{"id": "Patient.name", "path": "Patient.name", "min": 2, "max": "1"}],
        "an element the base lacks": [{"id": "Patient.colour", "path": "Patient.colour", "min": 1}],
        "a child the type lacks": [{"id": "Patient.name.nickname", "path": "Patient.name.nickname", "min": 1}],
        "a type the base does not allow": [
            {"id": "Patient.deceased[x]", "path": "Patient.deceased[x]", "type": [{"code": "string"}]}
        ],
    }
    for what, elements in broken.items():
        answer = _put(client, _profile("Broken", "Patient", elements))
        assert answer.status_code == 400, (what, answer.text)
        issue = answer.json()["issue"][0]
        assert issue["expression"] == ["StructureDefinition.differential.element[0]"], (what, answer.text)
    assert client.get("/fhir/StructureDefinition/Broken").status_code == 404
    unknown = _profile("Orphan", "Patient", [], base=BASE + "Nowhere")
    assert _put(client, unknown).status_code == 400
    # A base's required binding cannot be relaxed by a profile on it.
    strict = _profile(
        "StrictGender",
        "Patient",
        [
            {
                "id": "Patient.maritalStatus",
                "path": "Patient.maritalStatus",
                "binding": {
                    "strength": "required",
                    "valueSet": "http://hl7.org/fhir/ValueSet/marital-status",
                },
            }
        ],
    )
    assert _put(client, strict).status_code == 201
    loose = _profile(
        "LooseGender",
        "Patient",
        [{"id": "Patient.maritalStatus", "path": "Patient.maritalStatus", "binding": {"strength": "preferred"}}],
        base=BASE + "StrictGender",
    )
    answer = _put(client, loose)
    assert answer.status_code == 400 and "required binding" in answer.json()["issue"][0]["diagnostics"], answer.text


def _blood_pressure() -> dict[str, Any]:
    """Type narrowing, a reference target, an extensible binding, and components sliced by pattern."""
    elements: list[dict[str, Any]] = [
        {
            "id": "Observation.subject",
            "path": "Observation.subject",
            "min": 1,
            "type": [{"code": "Reference", "targetProfile": [CORE + "Patient"]}],
        },
        {"id": "Observation.value[x]", "path": "Observation.value[x]", "type": [{"code": "Quantity"}]},
        {
            "id": "Observation.interpretation",
            "path": "Observation.interpretation",
            "binding": {
                "strength": "extensible",
                "valueSet": "http://hl7.org/fhir/ValueSet/observation-interpretation",
            },
        },
        {
            "id": "Observation.component",
            "path": "Observation.component",
            "slicing": {"discriminator": [{"type": "pattern", "path": "code"}], "rules": "closed"},
        },
    ]
    for name, code in (("systolic", "8480-6"), ("diastolic", "8462-4")):
        slice_id = f"Observation.component:{name}"
        elements += [
            {"id": slice_id, "path": "Observation.component", "sliceName": name, "min": 1, "max": "1"},
            {
                "id": f"{slice_id}.code",
                "path": "Observation.component.code",
                "patternCodeableConcept": {"coding": [{"system": LOINC, "code": code}]},
            },
            {"id": f"{slice_id}.value[x]", "path": "Observation.component.value[x]", "type": [{"code": "Quantity"}]},
        ]
    return _profile("BloodPressure", "Observation", elements)


def _component(code: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"code": {"coding": [{"system": LOINC, "code": code}]}, **value}


def test_types_bindings_and_pattern_slices_of_a_generated_snapshot(client: TestClient) -> None:
    assert _put(client, _blood_pressure()).status_code == 201
    url = BASE + "BloodPressure"
    mmhg = {"valueQuantity": {"value": 120, "unit": "mmHg"}}
    good = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": {"reference": "Patient/bp-1"},
        "component": [_component("8480-6", mmhg), _component("8462-4", mmhg)],
    }
    assert _by_severity(_validate(client, good, url), "error") == []
    assert client.post("/fhir/Observation", json=_claiming(good, url), headers=FHIR).status_code == 201
    other = _component("8867-4", mmhg)
    broken = {
        "a string value (type Quantity)": ({**good, "valueString": "high"}, "Observation.valueString"),
        "a Group subject (Reference(Patient))": ({**good, "subject": {"reference": "Group/g"}}, "Observation.subject"),
        "no diastolic (slice min 1)": ({**good, "component": good["component"][:1]}, "Observation.component"),
        "a heart rate component (closed slicing)": (
            {**good, "component": [*good["component"], other]},
            "Observation.component[2]",
        ),
        "a string systolic (the slice's type)": (
            {**good, "component": [_component("8480-6", {"valueString": "x"}), good["component"][1]]},
            "Observation.component[0].valueString",
        ),
    }
    for what, (resource, where) in broken.items():
        answer = client.post("/fhir/Observation", json=_claiming(resource, url), headers=FHIR)
        assert answer.status_code == 400, (what, answer.text)
        assert [i["expression"][0] for i in answer.json()["issue"]] == [where], (what, answer.text)
    # An extensible binding: a code outside its value set is a warning, and the write goes through.
    odd = {**good, "interpretation": [{"coding": [{"system": "http://example.org/interp", "code": "odd"}]}]}
    issues = _validate(client, odd, url)
    assert _by_severity(issues, "error") == [], issues
    assert [where for where, _ in _by_severity(issues, "warning")] == ["Observation.interpretation[0]"], issues
    assert client.post("/fhir/Observation", json=_claiming(odd, url), headers=FHIR).status_code == 201


def test_slicing_by_type(client: TestClient) -> None:
    profile = _profile(
        "QuantityOnly",
        "Observation",
        [
            {
                "id": "Observation.value[x]",
                "path": "Observation.value[x]",
                "slicing": {"discriminator": [{"type": "type", "path": "$this"}], "rules": "closed"},
            },
            {
                "id": "Observation.value[x]:valueQuantity",
                "path": "Observation.value[x]",
                "sliceName": "valueQuantity",
                "type": [{"code": "Quantity"}],
            },
            {
                "id": "Observation.value[x]:valueQuantity.unit",
                "path": "Observation.value[x].unit",
                "min": 1,
            },
        ],
    )
    assert _put(client, profile).status_code == 201, _put(client, profile).text
    url = BASE + "QuantityOnly"
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}
    quantity = {**observation, "valueQuantity": {"value": 70, "unit": "kg"}}
    assert _by_severity(_validate(client, quantity, url), "error") == []
    no_unit = {**observation, "valueQuantity": {"value": 70}}
    assert [w for w, _ in _by_severity(_validate(client, no_unit, url), "error")] == ["Observation.valueQuantity.unit"]
    text = {**observation, "valueString": "70 kg"}
    assert [w for w, _ in _by_severity(_validate(client, text, url), "error")] == ["Observation.valueString"]


def test_slicing_by_profile(client: TestClient) -> None:
    """A collection Bundle that must hold a Mexican Patient (the shipped MXPatient profile) among its
    entries: an entry belongs to the slice when its resource conforms to that profile."""
    mx_patient = "http://ehr-core.mx/fhir/StructureDefinition/MXPatient"
    profile = _profile(
        "PatientDossier",
        "Bundle",
        [
            {"id": "Bundle.type", "path": "Bundle.type", "fixedCode": "collection"},
            {
                "id": "Bundle.entry",
                "path": "Bundle.entry",
                "slicing": {"discriminator": [{"type": "profile", "path": "resource"}], "rules": "open"},
            },
            {"id": "Bundle.entry:patient", "path": "Bundle.entry", "sliceName": "patient", "min": 1, "max": "1"},
            {
                "id": "Bundle.entry:patient.resource",
                "path": "Bundle.entry.resource",
                "type": [{"code": "Patient", "profile": [mx_patient]}],
            },
        ],
    )
    answer = _put(client, profile)
    assert answer.status_code == 201, answer.text
    url = BASE + "PatientDossier"
    curp = {"system": "urn:oid:2.16.840.1.113883.4.629", "value": "SABC560626MDFLRN01"}
    mexican = {"resourceType": "Patient", "identifier": [curp], "name": [{"family": "Sánchez"}]}
    other = {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "5"}], "name": [{"family": "Otro"}]}

    def dossier(*patients: dict[str, Any]) -> dict[str, Any]:
        entries = [{"fullUrl": f"urn:uuid:0000000{i}-0000-4000-8000-000000000000", "resource": p} for i, p in
                   enumerate(patients)]  # fmt: skip
        return {"resourceType": "Bundle", "type": "collection", "entry": entries}

    assert _by_severity(_validate(client, dossier(other, mexican), url), "error") == []
    errors = _by_severity(_validate(client, dossier(other), url), "error")
    assert [where for where, _ in errors] == ["Bundle.entry"], errors
    assert "Bundle.entry:patient" in errors[0][1], errors
    two = _by_severity(_validate(client, dossier(mexican, mexican), url), "error")
    assert [where for where, _ in two] == ["Bundle.entry[1]"], two
