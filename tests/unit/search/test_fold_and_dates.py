"""String folding (R4 §3.1.1.5.7) and date precision ranges (R4 §3.1.1.5.6)."""

from __future__ import annotations

import pytest

from projections.search.dates import MAX, date_range, format_micros
from projections.search.fold import fold, prefix_upper_bound


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Gómez", "gomez"),
        ("GÓMEZ", "gomez"),
        ("Peña Nieto", "pena nieto"),
        ("  María   José ", "maria jose"),
        ("Straße", "strasse"),
        ("ﬁnca", "finca"),  # NFKD compatibility: the ligature is two letters
        ("Zoë", "zoe"),
    ],
)
def test_fold_ignores_case_and_accents(text: str, folded: str) -> None:
    assert fold(text) == folded


def test_prefix_bound_is_above_every_continuation() -> None:
    upper = prefix_upper_bound("gom")
    for inside in ("gom", "gomez", "gom\uffff"):
        assert inside < upper
    assert upper < "gon"


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2013", "2013-01-01T00:00:00+00:00", "2013-12-31T23:59:59.999999+00:00"),
        ("2013-02", "2013-02-01T00:00:00+00:00", "2013-02-28T23:59:59.999999+00:00"),
        ("2012-02", "2012-02-01T00:00:00+00:00", "2012-02-29T23:59:59.999999+00:00"),
        ("2013-12", "2013-12-01T00:00:00+00:00", "2013-12-31T23:59:59.999999+00:00"),
        ("2013-01-14", "2013-01-14T00:00:00+00:00", "2013-01-14T23:59:59.999999+00:00"),
        ("2013-01-14T10:00", "2013-01-14T10:00:00+00:00", "2013-01-14T10:00:59.999999+00:00"),
        ("2013-01-14T10:00:00Z", "2013-01-14T10:00:00+00:00", "2013-01-14T10:00:00.999999+00:00"),
        ("2013-01-14T10:00:00-06:00", "2013-01-14T16:00:00+00:00", "2013-01-14T16:00:00.999999+00:00"),
        ("2013-01-14T10:00:00.5+01:00", "2013-01-14T09:00:00.500000+00:00", "2013-01-14T09:00:00.599999+00:00"),
        ("2013-01-14T10:00:00.123456789Z", "2013-01-14T10:00:00.123456+00:00", "2013-01-14T10:00:00.123456+00:00"),
    ],
)
def test_dates_are_ranges_by_precision(text: str, low: str, high: str) -> None:
    start, end = date_range(text)
    assert (format_micros(start), format_micros(end)) == (low, high)


def test_the_last_year_is_open_ended() -> None:
    assert date_range("9999")[1] == MAX


@pytest.mark.parametrize("text", ["", "13", "2013-13", "2013-02-30", "2013-01-14T25:00", "2013-01-14T10", "today"])
def test_malformed_dates_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        date_range(text)
