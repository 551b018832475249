"""UCUM canonical units (ehr_core/ucum): the reductions quantity search relies on (R4 §3.1.1.5.8)."""

from __future__ import annotations

import pytest

from ehr_core.ucum import canonical


@pytest.mark.parametrize(
    ("code", "value", "same_as", "expected"),
    [
        ("kg", 70, "g", 70000),
        ("mg/dL", 100, "g/L", 1),
        ("mmol/L", 5.5, "umol/mL", 5.5),
        ("mm[Hg]", 120, "kPa", 15.99864),  # UCUM: m[Hg] = 133.3220 kPa
        ("10*3/uL", 7.2, "10*9/L", 7.2),
        ("/min", 60, "/s", 1),
        ("{beats}/min", 72, "/min", 72),
        ("mL/min/{1.73_m2}", 90, "L/min", 0.09),
        ("kg/(m.s2)", 1, "Pa", 1),
        ("[lb_av]", 1, "g", 453.59237),
        ("%", 50, "1", 0.5),
        ("m[IU]/mL", 5, "[IU]/L", 5),
        ("h", 2, "min", 120),
        ("Cel", 37, "K", 310.15),
        ("[degF]", 98.6, "Cel", 37),
    ],
)
def test_units_that_ucum_converts_share_a_canonical_unit(
    code: str, value: float, same_as: str, expected: float
) -> None:
    unit, other = canonical(code), canonical(same_as)
    assert unit is not None and other is not None
    assert unit.unit == other.unit
    assert unit.value(value) == pytest.approx(other.value(expected), rel=1e-12)


@pytest.mark.parametrize(
    ("code", "other"),
    [
        ("mg/dL", "mmol/L"),  # needs the substance's molar mass
        ("mmol/L", "10*9/L"),  # a concentration is not a count per litre
        ("[IU]/L", "10*3/L"),  # an arbitrary unit is its own kind
        ("[IU]", "[arb'U]"),
        ("kg", "m"),
    ],
)
def test_units_that_ucum_cannot_convert_differ(code: str, other: str) -> None:
    unit, second = canonical(code), canonical(other)
    assert unit is not None and second is not None
    assert unit.unit != second.unit


@pytest.mark.parametrize("code", ["", "xyz", "m/", "(m", "mm[Hg", "[pH]", "Cel/s", "mEq/L", "k g"])
def test_malformed_unknown_and_logarithmic_units_have_no_canonical_form(code: str) -> None:
    assert canonical(code) is None


def test_exact_arithmetic_keeps_round_numbers_round() -> None:
    milligram = canonical("mg")
    assert milligram is not None
    assert milligram.value(1000.0) == 1.0
    assert milligram.value(0.1) == 0.0001
    assert milligram.value(float("inf")) == float("inf")
