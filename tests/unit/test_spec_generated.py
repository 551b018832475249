"""The committed spec modules are exactly what their generators give from the FHIR R4 definitions.

Each generator of ``ehr_core.spec.generate.TARGETS`` is re-run in memory on the shared corpus
(``tests/conftest.py`` ``CORPUS``: ``$EHR_CORPUS`` or ``../shared/corpus``) and compared byte for byte with
the module in the repository: a hand edit of a generated module, or a generator change without ``make spec``,
fails here. Without the corpus the test is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ehr_core.compartment import patient_compartment
from ehr_core.spec.generate import TARGETS, element_paths, same
from tests.conftest import CORPUS, IN_CI

DEFINITIONS = CORPUS / "spec" / "r4"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def definitions() -> Path:
    if not (DEFINITIONS / "search-parameters.json").is_file():
        message = f"FHIR R4 definitions not found at {DEFINITIONS} (set EHR_CORPUS)"
        if IN_CI:
            pytest.fail(message + " (required under CI=true)")
        pytest.skip(message)
    return DEFINITIONS


@pytest.mark.parametrize("module", sorted(TARGETS))
def test_committed_module_is_what_the_definitions_give(module: str, definitions: Path) -> None:
    generated = TARGETS[module](definitions)
    committed = (REPO / module).read_bytes()
    assert same(module, generated, committed), f"{module} differs from its generator's output: run `make spec`"


def test_fhirpath_forms_become_element_paths() -> None:
    shared = "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | Consent.patient"
    assert element_paths("CarePlan", shared) == ["subject"]
    assert element_paths("Task", "Task.for.where(resolve() is Patient)") == ["for"]
    assert element_paths("Observation", "(Observation.value as Reference) | Observation.focus.as(Reference)") == [
        "value",
        "focus",
    ]
    with pytest.raises(ValueError, match="element path"):
        element_paths("Patient", "Patient.telecom.where(system='phone')")


def test_a_task_for_a_patient_is_in_that_patients_compartment() -> None:
    # R4 compartmentdefinition-patient.json: Task by ``patient`` (Task.for) and ``focus`` (Task.focus).
    task = {"resourceType": "Task", "for": {"reference": "Patient/p1"}, "focus": {"reference": "Patient/p2"}}
    assert patient_compartment(task) == ["p1", "p2"]
    linked = {"resourceType": "Patient", "id": "p3", "link": [{"other": {"reference": "Patient/p1"}}]}
    assert patient_compartment(linked) == ["p3", "p1"]  # its own key first


def test_a_gzip_target_is_compared_by_its_content() -> None:
    import gzip

    generated = gzip.compress(b'[{"url":"x"}]', compresslevel=9, mtime=0)
    # Another zlib, another level or timestamp: the same content, no drift.
    assert same("ehr_core/spec/terminology.json.gz", generated, gzip.compress(b'[{"url":"x"}]', 1, mtime=7))
    assert not same("ehr_core/spec/terminology.json.gz", generated, gzip.compress(b'[{"url":"y"}]', mtime=0))
    assert not same("ehr_core/spec/terminology.json.gz", generated, b"not gzip")
    assert not same("ehr_core/spec/terminology.json.gz", generated, None)
