"""Search value syntax: tokens, escapes, prefixes, numbers' implied precision (R4 §3.1.1.5)."""

from __future__ import annotations

import pytest

from projections.search.dates import date_range
from projections.search.values import (
    DateValue,
    OfTypeValue,
    TokenValue,
    parse_date,
    parse_number,
    parse_of_type,
    parse_quantity,
    parse_reference_value,
    parse_token,
    split_unescaped,
    unescape,
)


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("http://loinc.org|8480-6", TokenValue("http://loinc.org", "8480-6")),
        ("8480-6", TokenValue(None, "8480-6")),
        ("|8480-6", TokenValue("", "8480-6")),
        ("http://loinc.org|", TokenValue("http://loinc.org", None)),
        (r"a\|b|c", TokenValue("a|b", "c")),
    ],
)
def test_tokens(text: str, token: TokenValue) -> None:
    assert parse_token(text) == token


@pytest.mark.parametrize("text", ["", "|", "a|b|c"])
def test_malformed_tokens(text: str) -> None:
    with pytest.raises(ValueError):
        parse_token(text)


def test_commas_split_unless_escaped() -> None:
    assert [unescape(p) for p in split_unescaped(r"a,b\,c,d\\", ",")] == ["a", "b,c", "d\\"]


def test_of_type() -> None:
    assert parse_of_type("http://terminology.hl7.org/CodeSystem/v2-0203|MR|123") == OfTypeValue(
        "http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "123"
    )
    with pytest.raises(ValueError):
        parse_of_type("MR|123")


def test_dates_with_prefixes() -> None:
    assert parse_date("ge2013-01") == DateValue("ge", *date_range("2013-01"))
    assert parse_date("2013").prefix == "eq"
    for bad in ("xx2013", "ge", "2013-1-1", "gt2013-02-30"):
        with pytest.raises(ValueError):
            parse_date(bad)


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("100", 99.5, 100.5), ("100.0", 99.95, 100.05), ("1e2", 50.0, 150.0), ("0.02", 0.015, 0.025)],
)
def test_numbers_imply_a_range_from_their_precision(text: str, low: float, high: float) -> None:
    number = parse_number(text)
    assert number.low == pytest.approx(low) and number.high == pytest.approx(high)


def test_quantities() -> None:
    quantity = parse_quantity("gt5.4|http://unitsofmeasure.org|mg")
    assert (quantity.number.prefix, quantity.number.value, quantity.system, quantity.code) == (
        "gt",
        5.4,
        "http://unitsofmeasure.org",
        "mg",
    )
    assert parse_quantity("5.4||mg").system is None and parse_quantity("5.4||mg").code == "mg"
    assert parse_quantity("5.4").code is None
    for bad in ("abc", "5.4|mg", "zz5"):
        with pytest.raises(ValueError):
            parse_quantity(bad)


def test_references() -> None:
    base = "http://example.org/fhir"
    assert parse_reference_value("Patient/1", base) == parse_reference_value(f"{base}/Patient/1", base)
    assert parse_reference_value("1", base).target_type is None
    other = parse_reference_value("http://other.org/fhir/Patient/1", base)
    assert (other.target_type, other.target_id, other.base) == ("Patient", "1", "http://other.org/fhir")
