"""The ``_filter`` parser (R4 search_filter.html grammar), without a database."""

from __future__ import annotations

import pytest

from projections.search.filter_syntax import (
    MAX_DEPTH,
    Comparison,
    FilterSyntaxError,
    Logical,
    Negation,
    PathSegment,
    parse_filter,
)


def _c(path: str, operator: str, value: str, quoted: bool = False) -> Comparison:
    return Comparison(tuple(PathSegment(name) for name in path.split(".")), operator, value, quoted)


def test_a_comparison_with_a_string_and_with_tokens() -> None:
    assert parse_filter('name co "pet"') == _c("name", "co", "pet", True)
    assert parse_filter("code eq http://loinc.org|1234-5") == _c("code", "eq", "http://loinc.org|1234-5")
    assert parse_filter("birthdate ge 2014-10-10") == _c("birthdate", "ge", "2014-10-10")
    assert parse_filter("subject.name co pet") == _c("subject.name", "co", "pet")
    assert parse_filter("  family   EQ   x  ") == _c("family", "eq", "x")


def test_string_escapes_are_json_escapes() -> None:
    assert parse_filter(r'name eq "a \"quoted\" word"').value == 'a "quoted" word'  # type: ignore[union-attr]
    assert parse_filter(r'name eq "G\u00f3mez and or"').value == "Gómez and or"  # type: ignore[union-attr]
    assert parse_filter('name eq ""').value == ""  # type: ignore[union-attr]


def test_and_binds_tighter_than_or() -> None:
    a, b, c = _c("a", "eq", "1"), _c("b", "eq", "2"), _c("c", "eq", "3")
    assert parse_filter("a eq 1 or b eq 2 and c eq 3") == Logical("or", (a, Logical("and", (b, c))))
    assert parse_filter("a eq 1 and b eq 2 or c eq 3") == Logical("or", (Logical("and", (a, b)), c))
    assert parse_filter("(a eq 1 or b eq 2) and c eq 3") == Logical("and", (Logical("or", (a, b)), c))
    assert parse_filter("a eq 1 and b eq 2 and c eq 3") == Logical("and", (a, b, c))
    assert parse_filter("A EQ 1 OR B EQ 2") == Logical("or", (_c("A", "eq", "1"), _c("B", "eq", "2")))


def test_not_and_parentheses() -> None:
    a, b = _c("a", "eq", "1"), _c("b", "eq", "2")
    assert parse_filter("not (a eq 1)") == Negation(a)
    assert parse_filter("not(a eq 1) and b eq 2") == Logical("and", (Negation(a), b))
    assert parse_filter("((a eq 1))") == a
    # Tokens stop at ")" so a group's last value needs no space before it.
    assert parse_filter("(a eq 1 or b eq 2)") == Logical("or", (a, b))
    # A parameter whose name starts with "not" is a parameter, not the keyword.
    assert parse_filter("note eq x") == _c("note", "eq", "x")


def test_paths_with_filters_are_parsed() -> None:
    parsed = parse_filter('related[type eq "has-component"].target pr true')
    assert isinstance(parsed, Comparison)
    assert parsed.path == (PathSegment("related", _c("type", "eq", "has-component", True)), PathSegment("target"))
    assert parsed.operator == "pr" and parsed.value == "true"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty filter"),
        ("   ", "empty filter"),
        ("name", "expected a space and an operator"),
        ("name co", "expected a space and a value"),
        ("name co ", "expected a value"),
        ("name xx y", "unknown operator 'xx'"),
        ('name co "unterminated', "unterminated string"),
        ('name co "bad \\x escape"', "invalid escape"),
        ("(name co x", "expected ')'"),
        ("name co x)", "unexpected ')'"),
        ("name co x and", "expected a search parameter name"),
        ("name co x or or y co z", "unknown operator 'y'"),
        ("not name co x", "unknown operator 'name'"),
        ("1name co x", "expected a search parameter name"),
        ("name co x y", "unexpected 'y'"),
        ("related[type eq x.target pr true", "expected ']'"),
    ],
)
def test_malformed_filters_say_what_and_where(text: str, message: str) -> None:
    with pytest.raises(FilterSyntaxError) as raised:
        parse_filter(text)
    assert message in str(raised.value) and "position" in str(raised.value)


def test_nesting_is_bounded() -> None:
    deep = "(" * (MAX_DEPTH + 1) + "a eq 1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(FilterSyntaxError, match="nested deeper"):
        parse_filter(deep)
    shallow = "(" * (MAX_DEPTH - 1) + "a eq 1" + ")" * (MAX_DEPTH - 1)
    assert parse_filter(shallow) == _c("a", "eq", "1")
