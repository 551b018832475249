"""The demo population: deterministic for a seed, valid identifiers, what an encounter produces."""

from __future__ import annotations

from collections import Counter

from ehr_core.demo.population import UNITS, population
from ehr_core.identity.identifiers import CURP_SYSTEM, NSS_SYSTEM, is_valid_clues, is_valid_curp, is_valid_nss
from ehr_core.identity.rules import check_identifiers


def test_same_seed_same_population_and_valid_identifiers() -> None:
    first = list(population(people=40, seed=5))
    assert first == list(population(people=40, seed=5))
    assert first != list(population(people=40, seed=6))
    resources = [r for write in first for r in write.resources]
    kinds = Counter(r["resourceType"] for r in resources)
    assert {"Patient", "Encounter", "Observation", "Condition", "MedicationRequest", "Location", "Organization"} <= set(
        kinds
    )
    for resource in resources:
        check_identifiers(resource)  # raises on any malformed CURP, NSS, CLUES
        for identifier in resource.get("identifier", []):
            if identifier["system"] == CURP_SYSTEM:
                assert is_valid_curp(identifier["value"])
            if identifier["system"] == NSS_SYSTEM:
                assert is_valid_nss(identifier["value"])
    assert all(is_valid_clues(unit.clues) for unit in UNITS)
    assert {unit.institution for unit in UNITS} == {"IMSS", "ISSSTE", "IMSS-BIENESTAR"}
    assert len({unit.clues[:2] for unit in UNITS}) >= 5
    # every clinical write names its institution and unit
    assert all(write.unit for write in first[1:])


def test_vital_signs_use_the_domain_loinc_codes() -> None:
    codes = {
        coding["code"]
        for write in population(people=30, seed=1)
        for resource in write.resources
        if resource["resourceType"] == "Observation"
        for coding in resource["code"]["coding"]
    }
    assert {"8480-6", "8462-4", "8867-4", "8310-5", "59408-5", "29463-7"} <= codes


def test_the_population_shares_through_consents_and_referrals() -> None:
    """Most persons seen at several institutions consented to share; referrals at every step of their workflow."""
    writes = list(population(people=120, seed=3))
    resources = [r for write in writes for r in write.resources]
    registered = Counter(r["id"].rsplit("-", 1)[-1] for r in resources if r["resourceType"] == "Patient")
    several = {key for key, n in registered.items() if n > 1}
    consenting = {r["id"].split("-")[1] for r in resources if r["resourceType"] == "Consent"}
    assert consenting <= several and len(consenting) > len(several) / 2
    assert any((r.get("provision") or {}).get("provision") for r in resources if r["resourceType"] == "Consent")
    final = {r["id"]: r["status"] for r in resources if r["resourceType"] == "Task"}
    assert {"requested", "accepted", "completed"} <= set(final.values())
    # The receiving institution moves its Tasks: every acceptance is written by the Task's owner.
    for write in writes:
        for task in (r for r in write.resources if r["resourceType"] == "Task" and r["status"] == "accepted"):
            assert task["owner"]["identifier"]["value"] == write.institution
