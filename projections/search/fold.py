"""String folding for the search index (R4 §3.1.1.5.7 "string").

"By default, a field matches a string query if the value of the field equals or starts with the supplied
parameter value, after both have been normalized by case and accent." Both the indexed value and the
searched value go through :func:`fold`, so "Gomez", "GÓMEZ" and "gómez" all index and search as "gomez".
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["fold", "prefix_upper_bound"]

#: The combining diacritical marks block (U+0300-U+036F) but U+034F, the one mark of it that is not
#: combining (canonical class 0): what NFKD leaves of Spanish accents and the tilde (á, ñ, ü).
_COMMON_MARKS = re.compile("[\u0300-\u034e\u0350-\u036f]+")

#: Above every character that :func:`fold` can produce: ``value < prefix + TOP`` bounds a prefix range.
TOP = "\U0010ffff"


def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded, spaces collapsed."""
    if text.isascii():
        # ASCII has no compatibility decompositions nor combining marks, and casefolds as it lowercases:
        # the same result without a Python step per character (most indexed text is ASCII).
        return " ".join(text.lower().split())
    decomposed = _COMMON_MARKS.sub("", unicodedata.normalize("NFKD", text))
    if decomposed.isascii():  # no other combining mark: no Python step per character (most accented text)
        return " ".join(decomposed.casefold().split())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def prefix_upper_bound(prefix: str) -> str:
    """The exclusive upper bound of the strings starting with ``prefix`` (for an index range scan)."""
    return prefix + TOP
