"""References in resources: rewriting them, and resolving conditional references.

Temporary ids (``urn:uuid:``, ``urn:oid:``) become the ids the server assigned (R4 §3.1.0.11.2
"Transaction Processing Rules"), and conditional references (``Practitioner?identifier=sys|val``,
R4 http.html#trules "Conditional References") become the one resource they match.

R4 defines conditional references for transactions. This server applies the same rules to every write
that stores a resource (create, update, patch, their conditional forms, and ``ehr import``): a stored
``Type?search`` is a reference that no search parameter, chain or ``_include`` can follow, so accepting
one would store a record that looks linked and is not. The rules, wherever they apply:

- exactly one match: the reference becomes ``Type/id`` (``display``, ``identifier`` and the rest of the
  Reference are kept as sent);
- no match: :class:`~ehr_core.errors.Unprocessable` (422), naming the element (``Encounter.participant[0].individual``);
- several matches: :class:`~ehr_core.errors.PreconditionFailed` (412), as for a conditional update
  (R4 §3.1.0.4.3) that matches several.

The match is a search among what the writer may read (the resolver given applies the access policy):
a conditional reference never finds, and so never discloses, a record hidden from its writer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from urllib.parse import parse_qsl

from ehr_core.errors import InvalidResource, Issue, PreconditionFailed, Unprocessable
from ehr_core.resources.types import is_supported

__all__ = [
    "CONDITIONAL_REFERENCE",
    "ConditionalReferences",
    "Resolver",
    "conditional_reference_values",
    "conditional_references",
    "rewrite_references",
]

CONDITIONAL_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")


class Resolver(Protocol):
    """Finds current resources matching a search (conditional interactions and references)."""

    def match(self, resource_type: str, params: list[tuple[str, str]]) -> list[str]:
        """Ids of at most two current ``resource_type`` resources matching ``params``."""
        ...


def _step(where: str, key: str | int) -> str:
    return f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"


def rewrite_references(node: Any, resolve: Callable[[str, str], str | None], where: str = "") -> Any:
    """A copy of ``node`` with every ``reference`` value that ``resolve`` maps replaced.

    ``resolve`` gets the reference and the location of its Reference element, FHIRPath style from
    ``where`` (``Encounter.participant[0].individual``); it returns the new reference, or None to keep
    the value (contained ``#id`` references, ordinary ``Type/id`` ones). Only what changes is copied.
    """
    if isinstance(node, dict):
        changed: dict[str, Any] | None = None
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                new: Any = resolve(value, where)
                new = value if new is None else new
            else:
                new = rewrite_references(value, resolve, _step(where, key)) if isinstance(value, dict | list) else value
            if new is not value:
                if changed is None:
                    changed = dict(node)
                changed[key] = new
        return node if changed is None else changed
    if isinstance(node, list):
        items = [rewrite_references(item, resolve, _step(where, index)) for index, item in enumerate(node)]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    return node


def conditional_references(node: Any, where: str = "") -> list[tuple[str, str]]:
    """Every conditional reference in ``node`` with the location of its Reference element."""
    found: list[tuple[str, str]] = []

    def collect(reference: str, location: str) -> None:
        if CONDITIONAL_REFERENCE.match(reference):
            found.append((location, reference))

    rewrite_references(node, lambda reference, location: collect(reference, location), where)
    return found


def conditional_reference_values(node: Any) -> Iterator[str]:
    """Every conditional reference value in ``node``, without where it is (cheaper than
    :func:`conditional_references`: what a bulk import asks of every resource before resolving it)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "reference":
                    if isinstance(value, str) and "?" in value and CONDITIONAL_REFERENCE.match(value):
                        yield value
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(child for child in item if isinstance(child, dict | list))


class ConditionalReferences:
    """Resolves the conditional references of resources by the rules above, each search once."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.resolved: dict[str, str] = {}
        #: References found to match nothing, not searched again while kept (a bulk load keeps them for
        #: one pass over its files: a reference to what is not loaded yet is not searched line after line).
        self.missing: set[str] = set()

    def resolve(self, reference: str, where: str) -> str | None:
        """``Type/id`` for a conditional ``reference`` at ``where``; None for any other reference."""
        conditional = CONDITIONAL_REFERENCE.match(reference)
        if conditional is None:
            return None
        if reference not in self.resolved:
            resource_type = conditional.group(1)
            if reference in self.missing:
                message = f"{where}: conditional reference {reference} matches no {resource_type} (R4 http.html#trules)"
                raise Unprocessable([Issue("not-found", message, where or None)])
            if not is_supported(resource_type):
                message = f"{where}: conditional reference {reference} names no resource type this server knows"
                raise InvalidResource([Issue("not-supported", message, where or None)])
            try:
                found = self.resolver.match(resource_type, parse_qsl(conditional.group(2), keep_blank_values=True))
            except InvalidResource as error:  # criteria that are no search: say where they were written
                raise InvalidResource(
                    [Issue(i.code, f"{where}: {reference}: {i.diagnostics}", where or None) for i in error.issues]
                ) from None
            if not found:
                self.missing.add(reference)
                message = f"{where}: conditional reference {reference} matches no {resource_type} (R4 http.html#trules)"
                raise Unprocessable([Issue("not-found", message, where or None)])
            if len(found) > 1:
                message = f"{where}: conditional reference {reference} matches more than one {resource_type}"
                raise PreconditionFailed([Issue("multiple-matches", message, where or None)])
            self.resolved[reference] = f"{resource_type}/{found[0]}"
        return self.resolved[reference]

    def rewrite(self, resource: Any) -> Any:
        """``resource`` with its conditional references resolved (the same object when it has none)."""
        if not isinstance(resource, dict):
            return resource
        return rewrite_references(resource, self.resolve, str(resource.get("resourceType") or "Resource"))
