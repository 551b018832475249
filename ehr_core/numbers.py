"""Integers a client writes in URLs, headers and ETags: ASCII digits only, bounded to 64 bits."""

from __future__ import annotations

__all__ = ["INT64_MAX", "parse_int"]

INT64_MAX = 2**63 - 1


def parse_int(text: str, *, signed: bool = False) -> int | None:
    """The integer ``text`` spells in ASCII digits (after one ``-`` if ``signed``), clamped to 64 bits; else None.

    ``str.isdigit`` holds for "²", which ``int`` refuses, ``str.isdecimal`` for "٣" (Arabic-Indic three), and
    ``int`` refuses more than 4,300 digits: each used to pass a check and become a 500 instead of a 400.
    Clamping keeps a huge cursor or version meaningful ("before everything", "no such version") and within
    what SQLite and PostgreSQL integers hold.
    """
    negative = signed and text.startswith("-")
    body = text[1:] if negative else text
    if not body or not body.isascii() or not body.isdecimal():
        return None
    digits = body.lstrip("0") or "0"
    value = INT64_MAX if len(digits) > 19 else min(int(digits), INT64_MAX)
    return -value if negative else value
