"""What every search parameter type implements, and what they share (R4 §3.1.1.5 "Search Parameter Types").

One module per type (``token``, ``string``, ``date``, ``reference``, ``quantity``, ``number``, ``uri``,
``composite``), each one :class:`SearchType`: how a value and its modifier are read from a query string,
which index rows a resource's values give, and the SQL condition (one text for SQLite and PostgreSQL)
that a parsed filter puts on a ``search_ids`` row. The generic parts — chains, ``_has``, ``:missing``,
paging, includes — stay in :mod:`projections.search.query`, :mod:`~projections.search.sql` and
:mod:`~projections.search.engine`, and reach a type only through :data:`projections.search.types.SEARCH_TYPES`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ehr_core.errors import InvalidResource, Issue
from projections.db import Dialect
from projections.search.registry import SearchParameter

if TYPE_CHECKING:
    from projections.terminology.codes import TerminologyCodes

__all__ = [
    "PREFIXES",
    "Condition",
    "Context",
    "IndexTable",
    "Rows",
    "SearchType",
    "Spans",
    "ValueFilter",
    "in_table",
    "invalid",
    "parse_values",
    "split_prefix",
    "split_unescaped",
    "text_or_none",
    "unescape",
]


# -- what a filter is, and what it becomes ----------------------------------------------------------


@dataclass(frozen=True)
class ValueFilter:
    """Match any of ``values`` (OR) of ``param``, under ``modifier``."""

    param: SearchParameter
    modifier: str | None
    values: tuple[Any, ...]


@dataclass
class Condition:
    sql: str
    params: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Spans:
    """What a date parameter's indexed ranges look like: how long at most, open at either end or not."""

    longest: int
    open_start: bool
    open_end: bool


class Context:
    """What building one search's SQL needs besides the filters: table aliases, date spans, and the access
    policy for the resources a chain or ``_has`` passes through."""

    def __init__(
        self,
        spans: dict[tuple[str, str], Spans] | None = None,
        visible: Callable[[str], Condition] | None = None,
        dialect: Dialect = "sqlite",
        terminology: TerminologyCodes | None = None,
    ) -> None:
        self._numbers = itertools.count(1)
        #: Per (type, parameter): its date ranges' longest span and open ends (``search_date_spans``).
        self.spans = spans or {}
        #: The viewer's visibility condition on a ``search_ids`` alias (None: auth off, no policy).
        #: A chain or ``_has`` matches only through resources the viewer may see, or its result would tell
        #: the caller what a hidden resource contains (``Observation?subject:Patient.name=X``).
        self.visible = visible
        #: The database the SQL is for: a special parameter's SQL may differ (full text, R4 ``_text``).
        self.dialect: Dialect = dialect
        #: The terminology store in the search's transaction: the value sets of token ``:in``/``:not-in`` and
        #: the hierarchies of ``:above``/``:below`` (None: no store at hand, those modifiers are refused).
        self.terminology = terminology

    def policy(self, alias: str) -> Condition:
        """The access policy on ``alias`` as an extra ``AND`` (empty without a viewer)."""
        if self.visible is None:
            return Condition("")
        found = self.visible(alias)
        return Condition(f" AND {found.sql}", list(found.params))

    def next(self, prefix: str) -> str:
        return f"{prefix}{next(self._numbers)}"

    def span(self, param: SearchParameter) -> Spans:
        return self.spans.get((param.resource_type, param.code), Spans(0, False, False))


@dataclass
class Rows:
    """Index rows of one resource, by table; the resource's key is added by the index."""

    token: list[tuple[str, str | None, str]] = field(default_factory=list)
    string: list[tuple[str, str, str]] = field(default_factory=list)
    date: list[tuple[str, int, int]] = field(default_factory=list)
    number: list[tuple[str, float, float]] = field(default_factory=list)
    #: (param, system, code, unit, low, high, canonical UCUM unit, canonical low, canonical high).
    quantity: list[
        tuple[str, str | None, str | None, str | None, float, float, str | None, float | None, float | None]
    ] = field(default_factory=list)
    reference: list[tuple[str, str | None, str, str | None]] = field(default_factory=list)
    uri: list[tuple[str, str]] = field(default_factory=list)
    #: (param, component, repetition, the key's token system and code, then the component type's columns;
    #: see types/composite.py).
    composite: list[tuple[Any, ...]] = field(default_factory=list)

    def deduplicated(self) -> Rows:
        return Rows(*(list(dict.fromkeys(getattr(self, name))) for name in TABLE_FIELDS))


#: The :class:`Rows` lists, in table order (each is the name of the search type that fills it).
TABLE_FIELDS = ("token", "string", "date", "number", "quantity", "reference", "uri", "composite")


@dataclass(frozen=True)
class IndexTable:
    """A search type's index table: ``resource_type, param, <columns>, sid``."""

    name: str
    columns: tuple[str, ...]
    #: The columns' SQL definitions, with ``{text}`` and ``{real}`` for the dialect's types.
    definition: str
    #: The indexes searches read, each after ``(resource_type, param, ...``.
    lookups: tuple[str, ...]
    #: PostgreSQL: the columns whose values go together (multi-column MCV statistics).
    statistics: str
    #: A row as stored: each value a b-tree index holds cut to a bounded prefix (projections/indexed.py).
    bound: Callable[[tuple[Any, ...]], tuple[Any, ...]] = lambda row: row
    #: Columns after :attr:`columns` that the index fills, not extraction (a reference's target key,
    #: projections/search/targets.py); :attr:`definition` has them last.
    filled: tuple[str, ...] = ()


class SearchType(Protocol):
    """One search parameter type (R4 search.html#ptypes): parse, extract, and match in SQL."""

    #: The spec's type code (``SearchParameter.type``).
    name: str
    table: IndexTable

    def accepts(self, param: SearchParameter, modifier: str) -> bool:
        """Whether ``param:modifier`` is a search this type supports (``:missing`` included)."""
        ...

    def parse(self, name: str, param: SearchParameter, modifier: str | None, raw: str, base: str | None) -> ValueFilter:
        """The filter of ``name=raw`` (comma-separated alternatives); a malformed value raises a 400."""
        ...

    def parse_value(self, text: str, base: str | None) -> Any:
        """One value without modifier (a composite's component); raises ``ValueError`` when malformed."""
        ...

    def extract(self, rows: Rows, code: str, datatype: str, value: Any) -> None:
        """Add the index rows of ``value`` (a ``datatype`` reached by parameter ``code``) to ``rows``."""
        ...

    def match(self, value: Any, base: str | None) -> Condition:
        """One parsed value as a condition on one row of :attr:`table` (bare column names)."""
        ...

    def condition(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        """The condition ``item`` puts on ``alias`` (a ``search_ids`` row); ``base``: this server's URL."""
        ...


# -- shared helpers ---------------------------------------------------------------------------------

#: R4 §3.1.1.5.6 prefixes (for number, date and quantity).
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def invalid(name: str, message: str) -> InvalidResource:
    return InvalidResource([Issue("invalid", f"search parameter {name}: {message}", name)])


def split_unescaped(text: str, separator: str) -> list[str]:
    """Split at ``separator`` not preceded by a backslash; escapes are kept for :func:`unescape`."""
    parts, current, index = [], [], 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    r"""``\,`` ``\|`` ``\$`` ``\\`` → the character itself (R4 §3.1.1.6 escaping)."""
    out, index = [], 0
    while index < len(text):
        if text[index] == "\\" and index + 1 < len(text):
            out.append(text[index + 1])
            index += 2
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def parse_values(name: str, raw: str, parse: Callable[[str], Any]) -> tuple[Any, ...]:
    """The comma-separated alternatives of ``raw`` (R4 §3.1.1.4: a comma ORs), each read by ``parse``."""
    items = split_unescaped(raw, ",")
    try:
        return tuple(parse(item) for item in items)
    except ValueError as error:
        raise invalid(name, str(error)) from None


def split_prefix(text: str) -> tuple[str, str]:
    """``gt2020`` → (``gt``, ``2020``); no prefix is ``eq`` (R4 §3.1.1.5.6)."""
    if len(text) > 2 and text[:2].isalpha() and text[:2].islower():
        if text[:2] not in PREFIXES:
            raise ValueError(f"unknown prefix {text[:2]!r} (use one of {', '.join(PREFIXES)})")
        return text[:2], text[2:]
    return "eq", text


def in_table(
    alias: str, table: str, param: SearchParameter, code: str, alternatives: list[Condition], negate: bool = False
) -> Condition:
    """``alias`` has (or, negated, has not) a row of ``code`` in ``table`` matching any alternative."""
    ors = " OR ".join(f"({alt.sql})" for alt in alternatives)
    params: list[Any] = [param.resource_type, code]
    for alt in alternatives:
        params += alt.params
    operator = "NOT IN" if negate else "IN"
    return Condition(
        f"{alias}.sid {operator} (SELECT sid FROM {table} WHERE resource_type = ? AND param = ? AND ({ors}))", params
    )


def text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
