"""The search parameter types, one module each, behind one protocol (R4 §3.1.1.5 search.html#ptypes).

:data:`SEARCH_TYPES` maps the spec's type code (``SearchParameter.type``) to its implementation
(:class:`~projections.search.types.base.SearchType`); parsing (:mod:`projections.search.query`),
extraction (:mod:`projections.search.extract`), SQL (:mod:`projections.search.sql`) and the index's tables
(:mod:`projections.search.index`) look a type up here and know nothing else about it.
"""

from __future__ import annotations

from types import MappingProxyType

from projections.search.types.base import SearchType
from projections.search.types.composite import CompositeType
from projections.search.types.date import DATE
from projections.search.types.number import NUMBER
from projections.search.types.quantity import QUANTITY
from projections.search.types.reference import REFERENCE
from projections.search.types.string import STRING
from projections.search.types.token import TOKEN
from projections.search.types.uri import URI

__all__ = ["COMPOSITE", "SEARCH_TYPES", "SearchType"]

_COMPONENT_TYPES: dict[str, SearchType] = {
    kind.name: kind for kind in (TOKEN, STRING, DATE, NUMBER, QUANTITY, REFERENCE, URI)
}
COMPOSITE = CompositeType(_COMPONENT_TYPES)

#: Spec type code → implementation, in the order of the index's tables.
SEARCH_TYPES: MappingProxyType[str, SearchType] = MappingProxyType({**_COMPONENT_TYPES, COMPOSITE.name: COMPOSITE})
