"""The matcher's grade when identifiers conflict or only name and birth date agree (no database needed)."""

from __future__ import annotations

from ehr_core.identity.features import Features, patient_features
from ehr_core.identity.identifiers import CURP_SYSTEM, NSS_SYSTEM
from ehr_core.identity.matching import Grade, compare, conflicting_systems, shared_systems

MRN = "urn:ehr-core:sid:imss:mrn"
OTHER_MRN = "urn:ehr-core:sid:issste:mrn"


def carmen(*identifiers: tuple[str, str], sex: str = "M", state: str = "", curp: str = "") -> Features:
    return Features(
        "CARMEN", "SALAS", "BRAVO", "1956-06-26", sex, state, curp, "valid" if curp else "absent", list(identifiers)
    )


def test_same_system_different_values_conflict_and_block_a_probable_link() -> None:
    a, b = carmen((MRN, "1001"), state="DF"), carmen((MRN, "1002"), state="DF")
    assert conflicting_systems(a, b) == [MRN]
    match = compare(a, b)
    assert match.score >= 23.0  # strong agreement on every field ...
    assert match.grade == Grade.POSSIBLE and not match.linkable  # ... yet a steward decides


def test_a_record_with_several_values_of_one_system_conflicts_only_when_none_is_shared() -> None:
    a, b = carmen((MRN, "1001"), (MRN, "old-7")), carmen((MRN, "old-7"))
    assert conflicting_systems(a, b) == [] and shared_systems(a, b) == [MRN]


def test_different_nss_and_different_curps_conflict() -> None:
    a, b = carmen((NSS_SYSTEM, "84966311213"), state="DF"), carmen((NSS_SYSTEM, "12345678903"), state="DF")
    assert compare(a, b).grade == Grade.POSSIBLE
    c = carmen((CURP_SYSTEM, "SABC560626MDFLRN01"), curp="SABC560626MDFLRN01", state="DF")
    d = carmen((CURP_SYSTEM, "SABC560626MDFLRS03"), curp="SABC560626MDFLRS03", state="DF")
    assert conflicting_systems(c, d) == [CURP_SYSTEM]
    assert not compare(c, d).linkable


def test_name_and_birth_date_alone_are_a_possible_match() -> None:
    assert compare(carmen(sex=""), carmen(sex="")).grade == Grade.POSSIBLE
    assert compare(carmen((MRN, "1")), carmen((OTHER_MRN, "1"))).grade == Grade.POSSIBLE  # sex, no state


def test_corroboration_by_sex_and_state_or_a_shared_identifier_makes_a_probable_match() -> None:
    assert compare(carmen((MRN, "1"), state="DF"), carmen((OTHER_MRN, "9"), state="DF")).grade == Grade.PROBABLE
    shared = compare(carmen((NSS_SYSTEM, "01878501012")), carmen((NSS_SYSTEM, "01878501012")))
    assert shared.grade == Grade.PROBABLE


def test_a_valid_curp_and_birth_date_stay_certain() -> None:
    curp = "SABC560626MDFLRN01"
    a, b = carmen((CURP_SYSTEM, curp), (MRN, "1"), curp=curp), carmen((CURP_SYSTEM, curp), (OTHER_MRN, "2"), curp=curp)
    assert compare(a, b).grade == Grade.CERTAIN


def test_a_state_of_birth_written_out_is_folded_like_its_code() -> None:
    """A name with a particle ("Ciudad de México", "Estado de México") reaches the same CURP state code."""
    born = {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"}
    for name, code in (("Ciudad de México", "DF"), ("Estado de México", "MC"), ("Baja California Sur", "BS")):
        resource = {"resourceType": "Patient", "extension": [{**born, "valueAddress": {"state": name}}]}
        assert patient_features(resource).state == code
