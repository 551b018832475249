"""Bounded index keys: a text value a projection keeps in a b-tree index is cut to a bounded prefix.

PostgreSQL refuses an index row larger than about a third of a page (~2,700 bytes: "index row size
exceeds btree version 4 maximum"), and incompressible text reaches that long before the 16 MiB body
limit. A client's resource may hold any string, so every string a view indexes goes through
:func:`indexed`, on the way in (rows) and on the way out (the values a query compares with), so the two
stay comparable. The full text stays where nothing indexes it (the stored resource, ``exact`` columns).
"""

from __future__ import annotations

from typing import overload

__all__ = ["INDEXED_BYTES", "indexed"]

#: Most UTF-8 bytes of one indexed text value. An index holds up to three of them beside short keys
#: (type, parameter, a number), so a row stays far below PostgreSQL's ~2,700-byte b-tree limit.
INDEXED_BYTES = 512


@overload
def indexed(text: str, most: int = INDEXED_BYTES) -> str: ...
@overload
def indexed(text: None, most: int = INDEXED_BYTES) -> None: ...
def indexed(text: str | None, most: int = INDEXED_BYTES) -> str | None:
    """``text`` cut to at most ``most`` UTF-8 bytes, on a character boundary (unchanged when shorter)."""
    if text is None or len(text) * 4 <= most:
        return text  # the common case, without encoding: even four bytes a character fit
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= most:
        return text
    return encoded[:most].decode("utf-8", "ignore")
