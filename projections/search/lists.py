"""``_list``: the resources a List names (R4 §3.1.1.5 "Parameters for all resources", search.html#list).

``Patient?_list=42`` finds the Patients that ``List/42`` has among its entries (``List.entry.item``),
read from the search index's reference rows of the List's ``item`` parameter: no second copy of the
List is kept. The List itself must be one the caller may read (the access policy applies to it as to a
chain's target), or its entries would tell what it holds.

Functional lists (R4 search.html#list: "$current-problems", "$current-medications",
"$current-allergies") are the server's own definitions of what is current, each a set of ordinary
conditions on the status elements of the types they list (see :data:`FUNCTIONAL`). Any other functional
list, or one on a type it does not list, is a 400 naming it.
"""

from __future__ import annotations

from typing import Any

from ehr_core.errors import InvalidResource, Issue
from projections.search.query import Filter, parameter_filter
from projections.search.special import SpecialFilter, register
from projections.search.sql import Condition, Context, condition
from projections.search.values import split_unescaped, unescape

__all__ = ["FUNCTIONAL", "ListFilter"]

#: Functional list → searched type → the conditions that make a resource of that type "current".
#: Entered in error, refuted or stopped records are never current.
FUNCTIONAL: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "$current-problems": {
        "Condition": (
            ("clinical-status", "active,recurrence,relapse"),
            ("verification-status:not", "entered-in-error,refuted"),
        ),
    },
    "$current-allergies": {
        "AllergyIntolerance": (
            ("clinical-status", "active"),
            ("verification-status:not", "entered-in-error,refuted"),
        ),
    },
    "$current-medications": {
        "MedicationStatement": (("status", "active,intended,on-hold"),),
        "MedicationRequest": (("status", "active,on-hold"),),
    },
}


def _invalid(message: str, code: str = "invalid") -> InvalidResource:
    return InvalidResource([Issue(code, f"search parameter _list: {message}", "_list")])


class ListFilter(SpecialFilter):
    """Resources of the searched type among the entries of any of ``lists`` (List ids), or, for a
    functional list, the resources meeting all of ``conditions``."""

    def __init__(self, resource_type: str, lists: tuple[str, ...], conditions: tuple[Filter, ...] = ()) -> None:
        self.resource_type = resource_type
        self.lists = lists
        self.conditions = conditions

    def condition(self, alias: str, base: str | None, context: Context) -> Condition:
        if self.conditions:
            found = [condition(item, alias, base, context) for item in self.conditions]
            return Condition(" AND ".join(f"({c.sql})" for c in found), [p for c in found for p in c.params])
        reference, owner = context.next("r"), context.next("l")
        policy = context.policy(owner)
        marks = ", ".join("?" * len(self.lists))
        base_sql, base_params = (
            (f"({reference}.base IS NULL OR {reference}.base = ?)", [base.rstrip("/")])
            if base
            else (f"{reference}.base IS NULL", [])
        )
        params: list[Any] = ["List", "item", self.resource_type, *base_params, "List", *self.lists, *policy.params]
        return Condition(
            f"{alias}.resource_id IN (SELECT {reference}.target_id FROM search_reference {reference} "
            f"WHERE {reference}.resource_type = ? AND {reference}.param = ? AND {reference}.target_type = ? "
            f"AND {base_sql} AND {reference}.sid IN (SELECT {owner}.sid FROM search_ids {owner} "
            f"WHERE {owner}.resource_type = ? AND {owner}.resource_id IN ({marks}){policy.sql}))",
            params,
        )


def _functional(resource_type: str, name: str, base: str | None) -> ListFilter:
    by_type = FUNCTIONAL.get(name)
    if by_type is None:
        known = ", ".join(sorted(FUNCTIONAL))
        raise _invalid(f"the functional list {name} is not supported (supported: {known})", "not-supported")
    pairs = by_type.get(resource_type)
    if pairs is None:
        types = ", ".join(sorted(by_type))
        raise _invalid(f"{name} lists {types}, not {resource_type}", "not-supported")
    found: list[Filter] = []
    for code, raw in pairs:
        item = parameter_filter(resource_type, code, raw, base)
        assert item is not None, f"{resource_type} has the parameter {code}"  # R4 defines each of them
        found.append(item)
    return ListFilter(resource_type, (), tuple(found))


def parse_list(resource_type: str, raw: str, base: str | None) -> ListFilter:
    """``_list=42`` (or ``List/42``; commas: any of several Lists), or ``_list=$current-problems``."""
    values = [unescape(item).strip() for item in split_unescaped(raw, ",")]
    if not all(values):
        raise _invalid("an empty value matches nothing; leave the parameter out")
    functional = [value for value in values if value.startswith("$")]
    if functional:
        if len(values) > 1:
            raise _invalid("a functional list cannot be combined with other lists in one value")
        return _functional(resource_type, functional[0], base)
    ids = tuple(value.removeprefix("List/") for value in values)
    if any("/" in value for value in ids):
        raise _invalid(f"write the List's id (42) or List/42, got {raw!r}")
    return ListFilter(resource_type, ids)


register("_list", parse_list)
