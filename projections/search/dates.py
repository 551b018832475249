"""Dates as ranges (R4 §3.1.1.5.6 "date").

"Dates are treated as ranges": ``2013-01`` is every instant from 2013-01-01T00:00:00 up to, but not
including, 2013-02-01. Both indexed values and searched values become ``(low, high)``: microseconds since
1970-01-01T00:00:00Z, both inclusive. A value without a time zone is read in UTC (the server's zone, as
R4 §2.24.0.4 allows). An open end (a Period without ``end``) is :data:`MAX` (or :data:`MIN`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["MAX", "MIN", "DateRange", "date_range", "format_micros"]

#: Open ends of a range (beyond any year a FHIR date can hold).
MIN = -(2**62)
MAX = 2**62

DateRange = tuple[int, int]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE = timedelta(microseconds=1)

_DATE_TIME = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2})(?::(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _ONE


def _zone(text: str | None) -> timedelta:
    if text is None or text == "Z":
        return timedelta(0)
    sign = -1 if text[0] == "-" else 1
    return sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6]))


def date_range(text: str) -> DateRange:
    """The instants a FHIR ``date``, ``dateTime`` or ``instant`` (or a search value) covers.

    Raises ``ValueError`` for anything that is not one (``2013-13``, ``yesterday``).
    """
    match = _DATE_TIME.match(text.strip())
    if match is None:
        raise ValueError(f"not a FHIR date/dateTime: {text!r}")
    parts = match.groupdict()
    if parts["hour"] is not None and parts["minute"] is None:
        raise ValueError(f"a time needs at least hours and minutes: {text!r}")
    year = int(parts["year"])
    month = int(parts["month"] or 1)
    day = int(parts["day"] or 1)
    hour = int(parts["hour"] or 0)
    minute = int(parts["minute"] or 0)
    second = int(parts["second"] or 0)
    fraction = (parts["fraction"] or "")[:6]
    micro = int(fraction.ljust(6, "0")) if fraction else 0
    # datetime() rejects a month 13, a 30 February or an hour 24 (ValueError).
    try:
        start = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC) - _zone(parts["zone"])
    except OverflowError:
        raise ValueError(f"date out of range: {text!r}") from None
    try:
        if parts["month"] is None:
            end = datetime(year + 1, 1, 1, tzinfo=UTC)
        elif parts["day"] is None:
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        elif parts["hour"] is None:
            end = start + timedelta(days=1)
        elif parts["second"] is None:
            end = start + timedelta(minutes=1)
        elif not fraction:
            end = start + timedelta(seconds=1)
        else:
            end = start + timedelta(microseconds=10 ** (6 - len(fraction)))
    except (OverflowError, ValueError):  # past the end of year 9999
        return _micros(start), MAX
    return _micros(start), _micros(end) - 1


def format_micros(micros: int) -> str:
    """Back to an instant (for diagnostics and tests)."""
    return (_EPOCH + timedelta(microseconds=micros)).isoformat()
