"""The ``composite`` search type (R4 search.html#composite): ``a$b`` matched within one repetition.

``Observation?component-code-value-quantity=http://loinc.org|8480-6$gt100`` asks for a component whose
code is systolic AND whose value is over 100 — the same ``Observation.component``, not any code with any
value. So each repetition of the composite's element (the resource itself for ``code-value-quantity``,
each ``Observation.component`` for ``component-code-value-quantity``) gets an ordinal, and each component
value is indexed in ``search_composite`` with its repetition ordinal and component number, in the columns
of its own type's table (token: system, code; quantity: system, code, unit, low, high and the canonical
UCUM value...).

Every R4 composite has a token component (the code of ``code-value-quantity``, the relation of
``relationship``, the chromosome of the MolecularSequence coordinates), which a search always gives (a
composite value has every part). The first one is the composite's *key*: it gets no rows of its own, but
each row of the other components carries its repetition's key token (``token_system``, ``token_code``; one
row per coding when the key has several). So ``code = X AND value > 60`` is one index range, on
``(resource_type, param, token_code, token_system, component, sid, low, high)``: the key's rows in ``sid``
order — the order a page is read in, so the page stops after its first matches — with the value compared
within the index entry. Joining a code row to a value row instead (two ranges, hashed or looped whatever
the statistics say) read every row of the code and every value over the threshold of any code (measured
at 400,000 resources, bench.search: page query p99 129,386 buffers against 388). A third component
(``chromosome$start$end``) is its rows joined on ``(sid, rep)``, reached through the same key. A
composite without a token component (none in R4) keeps a row per component value, and a search joins the
components' rows on ``(sid, rep)``. The SQL is the same text on SQLite and PostgreSQL. Each component
value is parsed and matched by its own type (:meth:`SearchType.parse_value`, :meth:`SearchType.match`).
Composites take no modifiers but ``:missing``.
"""

from __future__ import annotations

from collections.abc import KeysView
from typing import Any

from projections.search.paths import reader
from projections.search.registry import Component, SearchParameter
from projections.search.types.base import (
    Condition,
    Context,
    IndexTable,
    Rows,
    SearchType,
    ValueFilter,
    parse_values,
    split_unescaped,
)
from projections.search.types.token import token_match

__all__ = ["CompositeExtraction", "CompositeType", "composite_key"]

#: Every column a component type's table has; a component row fills those of its own type.
_COLUMNS = (
    "system",
    "code",
    "unit",
    "value",
    "exact",
    "target_type",
    "target_id",
    "base",
    "low",
    "high",
    "canonical",
    "canonical_low",
    "canonical_high",
)


class CompositeType:
    name = "composite"
    table = IndexTable(
        "search_composite",
        ("component", "rep", "token_system", "token_code", *_COLUMNS),
        # low/high hold numbers (infinite for an open Range) and dates as doubles, like the number table: a
        # B-tree on them serves both (a NUMERIC column would be cast to double against a float, unindexed).
        # Dates are exact to the microsecond between the years 1685 and 2255 (2**53 µs), the open ends
        # (±2**62) exactly; beyond, to a few microseconds.
        "component INTEGER NOT NULL, rep INTEGER NOT NULL, token_system {text}, token_code {text}, "
        "system {text}, code {text}, unit {text}, value {text}, exact TEXT, target_type {text}, target_id {text}, "
        "base {text}, low {real}, high {real}, canonical {text}, canonical_low {real}, canonical_high {real}",
        # One index: every search of a keyed composite gives its key (module docstring). The key's rows in
        # sid order, a number's or date's or quantity's bounds compared within the entry.
        ("token_code, token_system, component, sid, low, high",),
        "resource_type, param, token_code",
    )

    def __init__(self, types: dict[str, SearchType]) -> None:
        #: The component types (any type but composite).
        self.types = types

    def accepts(self, param: SearchParameter, modifier: str) -> bool:
        return modifier == "missing"

    def parse(self, name: str, param: SearchParameter, modifier: str | None, raw: str, base: str | None) -> ValueFilter:
        return ValueFilter(param, modifier, parse_values(name, raw, lambda text: self._parse(param, text, base)))

    def _parse(self, param: SearchParameter, text: str, base: str | None) -> tuple[Any, ...]:
        parts = split_unescaped(text, "$")
        if len(parts) != len(param.components):
            shape = "$".join(component.code for component in param.components)
            raise ValueError(f"a value of {param.code} has {len(param.components)} parts ({shape}), got {text!r}")
        return tuple(
            self.types[component.type].parse_value(part, base)
            for component, part in zip(param.components, parts, strict=True)
        )

    def parse_value(self, text: str, base: str | None) -> Any:
        raise ValueError("a composite cannot be a component")

    def extract(self, rows: Rows, code: str, datatype: str, value: Any) -> None:
        raise TypeError("composites are extracted from the resource (compiled())")

    def compiled(self, param: SearchParameter) -> CompositeExtraction:
        """How ``param``'s rows are read from a resource, compiled once (an index build reads every resource)."""
        return CompositeExtraction(param, self.types)

    def match(self, value: Any, base: str | None) -> Condition:
        raise TypeError("a composite is matched by condition()")

    def condition(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        """Per value: the rows of a non-key component holding the key's token and matching the component's
        value; with more such components, their rows joined on ``(sid, rep)``. Each side is a derived table
        on the one index (bare column names stay its own)."""
        param, table = item.param, self.table.name
        key = composite_key(param)
        alternatives = []
        for parts in item.values:
            wheres, params = [], []
            keyed = Condition("1 = 1") if key is None else token_match(parts[key], "token_code", "token_system")
            for number, (component, part) in enumerate(zip(param.components, parts, strict=True)):
                if number == key:
                    continue
                found = self.types[component.type].match(part, base)
                wheres.append(
                    f"FROM {table} WHERE resource_type = ? AND param = ? AND {keyed.sql} "
                    f"AND component = {number} AND ({found.sql})"
                )
                params += [param.resource_type, param.code, *keyed.params, *found.params]
            if len(wheres) == 1:  # a keyed pair: one range of the index, no join
                alternatives.append(Condition(f"{alias}.sid IN (SELECT sid {wheres[0]})", params))
                continue
            joins = " ".join(
                f"JOIN (SELECT sid, rep {where}) c{number} ON c{number}.sid = c0.sid AND c{number}.rep = c0.rep"
                for number, where in enumerate(wheres)
                if number
            )
            alternatives.append(
                Condition(f"{alias}.sid IN (SELECT c0.sid FROM (SELECT sid, rep {wheres[0]}) c0 {joins})", params)
            )
        if len(alternatives) == 1:  # ``a.sid IN (...)`` as it is: a set of keys a page can be driven from
            return alternatives[0]
        return Condition(" OR ".join(f"({a.sql})" for a in alternatives), [p for a in alternatives for p in a.params])


def composite_key(param: SearchParameter) -> int | None:
    """The number of the composite's key: its first token component (None: it has no token component)."""
    return next((number for number, component in enumerate(param.components) if component.type == "token"), None)


class _ComponentReads:
    """One component compiled: its routes as readers (:func:`projections.search.paths.reader`) and where
    its type's columns go among the composite's (:data:`_COLUMNS`)."""

    def __init__(self, component: Component, kind: SearchType) -> None:
        self.code = component.code
        self.expression = component.expression
        self.from_resource = component.from_resource
        self.kind = kind
        self.table = component.type  # the Rows list its type fills
        self.reads = tuple((route.steps[0].key, route.datatype, reader(route)) for route in component.routes)
        self.keys = tuple(dict.fromkeys(key for key, _, _ in self.reads))
        self.slots = tuple(_COLUMNS.index(column) for column in kind.table.columns)
        self.bound = kind.table.bound

    def present(self, source: Any) -> bool:
        """Whether any route can reach a value in ``source`` (a first key holds something): a cheap test
        before the rows, since a composite value needs every component."""
        return isinstance(source, dict) and any(source.get(key) is not None for key in self.keys)

    def rows(self, source: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The component's values in one repetition (or the resource), as composite columns (:data:`_COLUMNS`)."""
        found = Rows()
        for key, datatype, read in self.reads:
            value = source.get(key)
            if value is not None:
                for item in read(value):
                    self.kind.extract(found, self.code, datatype, item)
        rows = []
        for row in getattr(found, self.table):
            if row[0] != self.code:  # derived rows (``code:text``...) are not the component
                continue
            columns: list[Any] = [None] * len(_COLUMNS)
            for slot, value in zip(self.slots, self.bound(row)[1:], strict=True):
                columns[slot] = value
            rows.append(tuple(columns))
        return rows


class CompositeExtraction:
    """A composite parameter's rows of a resource: each repetition's component values, with the repetition's
    ordinal (in document order)."""

    def __init__(self, param: SearchParameter, types: dict[str, SearchType]) -> None:
        self.code = param.code
        #: Per repetition route: (first key, reader), or None for the resource itself.
        self.repetitions = tuple(
            (route.steps[0].key, reader(route)) if route.steps else None for route in param.repetitions
        )
        self.components = tuple(_ComponentReads(component, types[component.type]) for component in param.components)
        #: The key component (its token is on the other components' rows), or None: a row per component value.
        self.key = composite_key(param)
        #: Per repetition, sets of top-level keys a resource must have one of each for the repetition to give
        #: a row: its own key (for the resource itself: each component's), and each ``%resource`` component's.
        self.requirements = tuple(
            tuple(frozenset(component.keys) for component in self.components)
            if repetition is None
            else (
                frozenset((repetition[0],)),
                *(frozenset(component.keys) for component in self.components if component.from_resource),
            )
            for repetition in self.repetitions
        )
        #: One necessary key set of each repetition, together: a resource with none of them gives no row.
        self.gate = frozenset().union(*(needs[-1] for needs in self.requirements))

    def possible(self, keys: KeysView[str]) -> bool:
        """Whether a resource with these top-level keys may give rows: most composites of a type find their
        element absent (an Observation with a ``valueQuantity`` has no ``valueCodeableConcept`` for
        ``code-value-concept``, no ``component`` for ``component-code-value-quantity``)."""
        if keys.isdisjoint(self.gate):
            return False
        return any(all(not keys.isdisjoint(needed) for needed in needs) for needs in self.requirements)

    def extract(self, rows: Rows, resource: dict[str, Any], cache: dict[tuple[int, str, str], list[Any]]) -> None:
        """Add the composite's rows of ``resource``. ``cache``: one resource's component rows by (element, type,
        expression), shared by its composites — the ``code-value-*`` of an Observation read the same ``code``."""
        ordinal = 0
        for repetition in self.repetitions:
            if repetition is None:
                elements: list[Any] = [resource]
            else:
                value = resource.get(repetition[0])
                elements = repetition[1](value) if value is not None else []
            for element in elements:
                sources = [resource if component.from_resource else element for component in self.components]
                if all(component.present(source) for component, source in zip(self.components, sources, strict=True)):
                    self._add(rows, ordinal, sources, cache)
                ordinal += 1

    def _add(self, rows: Rows, ordinal: int, sources: list[Any], cache: dict[tuple[int, str, str], list[Any]]) -> None:
        found: list[list[tuple[Any, ...]]] = []
        for component, source in zip(self.components, sources, strict=True):
            # The rows hold the component's columns, not its code: ``code`` of ``code-value-quantity`` and
            # ``combo-code`` of ``combo-code-value-quantity`` read the same ``code`` once.
            key = (id(source), component.table, component.expression)
            component_rows = cache.get(key)
            if component_rows is None:
                component_rows = cache[key] = component.rows(source)
            if not component_rows:
                return  # a composite value needs every component (else it is missing)
            found.append(component_rows)
        if self.key is None:
            for number, component_rows in enumerate(found):
                rows.composite += [(self.code, number, ordinal, None, None, *row) for row in component_rows]
            return
        # The key's rows are token columns: system, code first (:data:`_COLUMNS`).
        tokens = [(row[0], row[1]) for row in found[self.key]]
        for number, component_rows in enumerate(found):
            if number != self.key:
                rows.composite += [
                    (self.code, number, ordinal, *token, *row) for token in tokens for row in component_rows
                ]
