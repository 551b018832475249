"""The ``composite`` search type (R4 search.html#composite): ``a$b`` matched within one repetition.

``Observation?component-code-value-quantity=http://loinc.org|8480-6$gt100`` asks for a component whose
code is systolic AND whose value is over 100 — the same ``Observation.component``, not any code with any
value. So each repetition of the composite's element (the resource itself for ``code-value-quantity``,
each ``Observation.component`` for ``component-code-value-quantity``) gets an ordinal, and each component
value is indexed in ``search_composite`` with its repetition ordinal and component number, in the columns
of its own type's table (token: system, code; quantity: system, code, unit, low, high and the canonical
UCUM value...). A search is
the components' matching rows joined on ``(sid, rep)`` — the
same SQL text on SQLite and PostgreSQL. Each component value is parsed and matched by its own type
(:meth:`SearchType.parse_value`, :meth:`SearchType.match`). Composites take no modifiers but ``:missing``.
"""

from __future__ import annotations

from typing import Any

from projections.search.paths import walk
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

__all__ = ["CompositeType"]

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
        ("component", "rep", *_COLUMNS),
        # low/high hold numbers (infinite for an open Range) and dates as doubles, like the number table: a
        # B-tree on them serves both (a NUMERIC column would be cast to double against a float, unindexed).
        # Dates are exact to the microsecond between the years 1685 and 2255 (2**53 µs), the open ends
        # (±2**62) exactly; beyond, to a few microseconds.
        "component INTEGER NOT NULL, rep INTEGER NOT NULL, system {text}, code {text}, unit {text}, "
        "value {text}, exact TEXT, target_type {text}, target_id {text}, base {text}, low {real}, high {real}, "
        "canonical {text}, canonical_low {real}, canonical_high {real}",
        (
            "component, code, system, sid",
            "component, sid, rep",
            "component, value, sid",
            "component, target_id, sid",
            "component, low, high",
            "component, high",
        ),
        "resource_type, param, code",
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
        raise TypeError("composites are extracted from the resource (extract_resource)")

    def extract_resource(
        self,
        rows: Rows,
        param: SearchParameter,
        resource: dict[str, Any],
        cache: dict[tuple[int, str, str], list[tuple[Any, ...]]] | None = None,
    ) -> None:
        """Each repetition's component values, with the repetition's ordinal (in document order).

        ``cache``: one resource's component rows by (element, component), shared by its composites — the
        four ``code-value-*`` of an Observation read the same ``code``."""
        cache = {} if cache is None else cache
        ordinal = 0
        for repetition in param.repetitions:
            for element in walk(resource, repetition) if repetition.steps else [resource]:
                found: list[list[tuple[Any, ...]]] = []
                for component in param.components:
                    source = resource if component.from_resource else element
                    key = (id(source), component.code, component.expression)
                    if key not in cache:
                        cache[key] = self._component_rows(component, source)
                    if not cache[key]:
                        break  # a composite value needs every component (else it is missing)
                    found.append(cache[key])
                else:
                    for number, component_rows in enumerate(found):
                        rows.composite += [(param.code, number, ordinal, *row) for row in component_rows]
                ordinal += 1

    def _component_rows(self, component: Component, source: Any) -> list[tuple[Any, ...]]:
        """The component's values in one repetition (or the resource), as composite columns (:data:`_COLUMNS`)."""
        kind = self.types[component.type]
        found = Rows()
        for route in component.routes:
            for value in walk(source, route):
                kind.extract(found, component.code, route.datatype, value)
        rows = []
        for row in getattr(found, component.type):
            if row[0] != component.code:  # derived rows (``code:text``...) are not the component
                continue
            columns = dict(zip(kind.table.columns, kind.table.bound(row)[1:], strict=True))
            rows.append(tuple(columns.get(column) for column in _COLUMNS))
        return rows

    def match(self, value: Any, base: str | None) -> Condition:
        raise TypeError("a composite is matched by condition()")

    def condition(self, item: ValueFilter, alias: str, base: str | None, context: Context) -> Condition:
        """Per value: the components' rows joined on ``(sid, rep)``. Each side is a derived table on its own
        index (bare column names stay its own), so the planner starts from the more selective component."""
        param, table = item.param, self.table.name
        alternatives = []
        for parts in item.values:
            sides, params = [], []
            for number, (component, part) in enumerate(zip(param.components, parts, strict=True)):
                found = self.types[component.type].match(part, base)
                sides.append(
                    f"(SELECT sid, rep FROM {table} WHERE resource_type = ? AND param = ? "
                    f"AND component = {number} AND ({found.sql})) c{number}"
                )
                params += [param.resource_type, param.code, *found.params]
            joins = " ".join(
                f"JOIN {side} ON c{number}.sid = c0.sid AND c{number}.rep = c0.rep"
                for number, side in enumerate(sides)
                if number
            )
            alternatives.append(Condition(f"{alias}.sid IN (SELECT c0.sid FROM {sides[0]} {joins})", params))
        return Condition(" OR ".join(f"({a.sql})" for a in alternatives), [p for a in alternatives for p in a.params])
