"""The hook for the special search parameters (R4 §3.1.1.5 "Parameters for all resources": ``_text``,
``_content``, ``_list``, ``_filter``): each is parsed and turned into SQL by its own module.

A special parameter does not fit the value tables of :mod:`projections.search.index` (a full-text
index, another resource's entries, a boolean expression over other parameters), so the generic
parsing (:mod:`projections.search.query`) and SQL (:mod:`projections.search.sql`) only dispatch to it:
its module registers a parser here, the parser returns a :class:`SpecialFilter`, and the filter builds
its own condition on a ``search_ids`` row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from projections.search.sql import Condition, Context

__all__ = ["SPECIAL_PARAMETERS", "SpecialFilter", "SpecialParser", "register"]


class SpecialFilter(ABC):
    """A parsed special parameter: it knows the SQL condition it puts on a search."""

    #: Whether the condition holds date conditions of the value tables (the search then reads the
    #: date parameters' spans, see :func:`projections.search.sql.read_spans`).
    dates: bool = False
    #: Whether its matches come from an index in no key order (a GIN bitmap): a page is then driven from
    #: them, sorted once (projections/search/keysets.py).
    unordered: bool = False

    @abstractmethod
    def condition(self, alias: str, base: str | None, context: Context) -> Condition:
        """The condition on ``alias`` (a ``search_ids`` row)."""

    def ordered_page(self, rest: Condition, after: int | None, backwards: bool, limit: int) -> Condition | None:
        """When its matches are a search's only set of keys: a PostgreSQL page query (rows ``sid``,
        ``resource_id``) reading them in key order, at most ``limit`` after the key ``after`` (before it when
        ``backwards``) that pass ``rest`` (conditions on ``search_ids a``); None: they are sorted once."""
        return None


SpecialParser = Callable[[str, str, str | None], SpecialFilter]
"""Reads one special parameter's value: (searched type, raw value, server base) → filter."""

#: Special parameter name → its parser (filled by the modules that implement them, at import).
SPECIAL_PARAMETERS: dict[str, SpecialParser] = {}


def register(name: str, parser: SpecialParser) -> None:
    SPECIAL_PARAMETERS[name] = parser
