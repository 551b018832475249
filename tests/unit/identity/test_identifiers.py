"""CURP, NSS, CLUES and RFC validators: the DOMAIN.md vectors and property tests."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehr_core.identity.identifiers import (
    CURP_PLACEHOLDER,
    STATES,
    curp_check_digit,
    is_curp_placeholder,
    is_valid_clues,
    is_valid_curp,
    is_valid_nss,
    is_valid_rfc,
    nss_check_digit,
    parse_curp,
    rfc_check_digit,
)

VALID_CURPS = ["SABC560626MDFLRN01", "AAMR740524HOCBRN08", "BAUM690216HMSLRG18", "ZUVM471127HOCTJG03"]
INVALID_CURPS = {
    "SABC560626MDFLRN09": "check digit",
    "SABC560626MXXLRN01": "state",
    "SABC561626MDFLRN01": "date",
}


@pytest.mark.parametrize("curp", VALID_CURPS)
def test_valid_curp_vectors(curp: str) -> None:
    assert is_valid_curp(curp)


@pytest.mark.parametrize(("curp", "problem"), INVALID_CURPS.items())
def test_invalid_curp_vectors_name_the_problem(curp: str, problem: str) -> None:
    assert not is_valid_curp(curp)
    with pytest.raises(ValueError, match=problem):
        parse_curp(curp)


def test_curp_parts() -> None:
    curp = parse_curp("SABC560626MDFLRN01")
    assert (curp.birth_date, curp.sex, curp.state) == (date(1956, 6, 26), "M", "DF")


def test_curp_placeholder_is_recognised_but_not_valid() -> None:
    assert is_curp_placeholder(CURP_PLACEHOLDER)
    assert not is_valid_curp(CURP_PLACEHOLDER)


@pytest.mark.parametrize(
    "curp", ["", "SABC560626MDFLRN0", "sabc560626mdflrn01", "SABC560631MDFLRN01", "SABC560626QDFLRN01"]
)
def test_malformed_curps(curp: str) -> None:
    assert not is_valid_curp(curp)


def test_nss_vectors() -> None:
    assert is_valid_nss("84966311213")
    assert is_valid_nss("12345678903")
    assert not is_valid_nss("84966311215")
    assert not is_valid_nss("8496631121")
    assert not is_valid_nss("8496631121A")


def test_clues_and_rfc_vectors() -> None:
    for clues in ("DFIMS000020", "DFIST000312", "MCIMB005225", "QTSSA003451"):
        assert is_valid_clues(clues)
    for clues in ("XXIMS000020", "DFIMS00002", "DF1MS000020"):
        assert not is_valid_clues(clues)
    assert is_valid_rfc("GODE561231GR8")
    assert not is_valid_rfc("GODE561231GR9")
    assert not is_valid_rfc("GODE561331GR8")


# -- properties -------------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CONSONANTS = "BCDFGHJKLMNPQRSTVWXYZ"


@st.composite
def curps(draw: st.DrawFn) -> str:
    born = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)))
    head = draw(st.text(_LETTERS, min_size=4, max_size=4))
    sex = draw(st.sampled_from("HMX"))
    state = draw(st.sampled_from([*STATES, "NE"]))
    inner = draw(st.text(_CONSONANTS, min_size=3, max_size=3))
    homoclave = draw(st.sampled_from("0123456789")) if born.year < 2000 else draw(st.sampled_from(_LETTERS))
    first17 = f"{head}{born:%y%m%d}{sex}{state}{inner}{homoclave}"
    return first17 + str(curp_check_digit(first17))


@given(curps())
def test_generated_curps_validate_and_round_trip(curp: str) -> None:
    parsed = parse_curp(curp)
    assert parsed.value == curp
    assert f"{parsed.birth_date:%y%m%d}" == curp[4:10]


@given(curps(), st.integers(min_value=1, max_value=9))
def test_any_other_check_digit_is_rejected(curp: str, shift: int) -> None:
    wrong = curp[:17] + str((int(curp[17]) + shift) % 10)
    assert not is_valid_curp(wrong)


@given(st.text("0123456789", min_size=10, max_size=10))
def test_nss_luhn_property(first10: str) -> None:
    digit = nss_check_digit(first10)
    assert is_valid_nss(first10 + str(digit))
    for other in range(10):
        if other != digit:
            assert not is_valid_nss(first10 + str(other))


@given(st.text("0123456789", min_size=10, max_size=10), st.integers(min_value=0, max_value=9))
def test_nss_catches_every_single_digit_error(first10: str, position: int) -> None:
    number = first10 + str(nss_check_digit(first10))
    for replacement in "0123456789":
        changed = number[:position] + replacement + number[position + 1 :]
        assert is_valid_nss(changed) == (changed == number)


@given(
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=4, max_size=4),
    st.dates(min_value=date(1930, 1, 1), max_value=date(2029, 12, 31)),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=2, max_size=2),
)
def test_rfc_mod11_property(letters: str, born: date, homoclave: str) -> None:
    first12 = f"{letters}{born:%y%m%d}{homoclave}"
    rfc = first12 + rfc_check_digit(first12)
    assert is_valid_rfc(rfc)
