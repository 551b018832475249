"""A subscription's criteria decided in memory, against the index values of the changed resource.

R4 subscription.html: "the criteria [...] are evaluated against the resource when it changes". The matcher
used to ask the search engine (one criteria search per batch and criteria, restricted to ``_id``); for the
criteria most subscriptions carry (R4 §3.1.1.5.10 token parameters, no modifier: ``code=system|code``,
``category=...``, ``status=final``, ``_id``) the answer is a lookup among the token rows the search index's
extractor produces for the resource (:func:`projections.search.extract.extract`): the same rows the search
compares, compared the same way (:func:`projections.indexed.indexed` on both sides, ``system|code``,
``|code``, ``system|``, a comma an OR, each parameter an AND). Anything else (other types, modifiers,
chains, ``_has``, ``:in``, ``_filter``, ...) is left to the search engine: :meth:`Criteria.decides` is
False and the matcher runs the criteria search as before. The read policy is applied apart, by the matcher
(:func:`projections.access.visible_ids`), as the search applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from ehr_core.errors import InvalidResource
from projections.indexed import indexed
from projections.search.query import parse_search
from projections.search.types.base import Rows, ValueFilter
from projections.search.types.token import TokenValue

__all__ = ["Criteria", "compile_criteria"]


@dataclass(frozen=True)
class _Any:
    """One parameter of the criteria: the resource has a token of ``param`` equal to any of ``values``."""

    param: str
    values: tuple[TokenValue, ...]


@dataclass(frozen=True)
class Criteria:
    """A subscription's criteria as the matcher evaluates them."""

    #: Whether :meth:`matches` answers (False: run the criteria search).
    decides: bool
    #: The search refuses the criteria (an unknown parameter, a malformed value): never matched.
    refused: bool = False
    #: ``_id`` values (OR), None when the criteria do not name ``_id``.
    ids: tuple[frozenset[str], ...] = ()
    tokens: tuple[_Any, ...] = ()

    def matches(self, resource_id: str, rows: Rows) -> bool:
        """Whether a resource of ``resource_id`` whose index rows are ``rows`` meets every parameter."""
        if self.refused:
            return False
        if any(resource_id not in ids for ids in self.ids):
            return False
        if not self.tokens:
            return True
        present = _tokens(rows)
        return all(_any_present(present, clause) for clause in self.tokens)


def _tokens(rows: Rows) -> dict[str, list[tuple[str | None, str]]]:
    found: dict[str, list[tuple[str | None, str]]] = {}
    for param, system, code in rows.token:
        # The index keeps bounded prefixes (projections/indexed.py); the search compares bounded values.
        found.setdefault(param, []).append((indexed(system), indexed(code)))
    return found


def _any_present(present: dict[str, list[tuple[str | None, str]]], clause: _Any) -> bool:
    rows = present.get(clause.param, ())
    for value in clause.values:
        code, system = indexed(value.code), indexed(value.system)
        for row_system, row_code in rows:
            if code is None:  # system| : any code of that system
                if row_system == system:
                    return True
            elif row_code == code and (system is None or row_system == (system or None)):
                return True  # code alone: any system; |code: no system; system|code: both
    return False


_SEARCH_DECIDES = Criteria(decides=False)
_REFUSED = Criteria(decides=True, refused=True)


@lru_cache(maxsize=1024)
def compile_criteria(resource_type: str, params: tuple[tuple[str, str], ...]) -> Criteria:
    """The criteria ``resource_type?params`` for in-memory matching (cached: parsed once, not per batch)."""
    try:
        request = parse_search(resource_type, list(params))
    except InvalidResource:
        return _REFUSED  # what the criteria search raises, and the matcher takes as "never matches"
    if request.unknown:
        return _REFUSED  # the search refuses it (a criteria must not be silently widened)
    # No filter (a topic with no trigger search and no filters, or only result parameters) matches every
    # resource of the type: the criteria search, always restricted to ``_id``, found each one.
    if request.compartment is not None:
        return _SEARCH_DECIDES
    ids: list[frozenset[str]] = []
    tokens: list[_Any] = []
    for item in request.filters:
        if not isinstance(item, ValueFilter) or item.modifier is not None:
            return _SEARCH_DECIDES
        if item.param.code == "_id":
            ids.append(frozenset(str(value) for value in item.values))
        elif item.param.type == "token" and _plain_tokens(item.values):
            tokens.append(_Any(item.param.code, tuple(item.values)))
        else:
            return _SEARCH_DECIDES
    return Criteria(decides=True, ids=tuple(ids), tokens=tuple(tokens))


def _plain_tokens(values: Sequence[object]) -> bool:
    return all(isinstance(value, TokenValue) for value in values)
