"""SMART scopes (SMART App Launch 2.0 §Scopes and Launch Context): what a token's ``scope`` grants.

v2 ``{patient|user|system}/{Type|*}.{c?r?u?d?s?}`` and v1 ``.read``/``.write``/``.*`` (read = ``rs``,
write = ``cud``); ``openid``, ``fhirUser``, ``launch/patient`` grant no resource access.

Granular v2 scopes (App Launch 2.0 §Finer-grained resource constraints using search parameters, e.g.
``patient/Observation.rs?category=laboratory``) grant exactly what can be enforced: a ``GET`` search of that
one type whose query carries every constraint with that single value (so every match satisfies it), without
``_include``/``_revinclude``/``_has``/``_contained`` (which would bring resources the constraint does not
cover). A single-resource read, ``$everything`` and ``$export`` are not covered by them (fail closed):
telling whether one resource matches a search would need the search itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from fhir_api.auth.needs import Need

__all__ = ["Grant", "constraint_holds", "covered", "parse_scopes"]

_V2 = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(?:\?(.+))?$")
#: Search parameters that bring resources beyond the searched ones: a constrained scope never covers them.
_WIDENING = ("_include", "_revinclude", "_has", "_contained")


@dataclass(frozen=True)
class Grant:
    context: str  # patient, user, system
    resource_type: str  # a type or *
    permissions: frozenset[str]  # c r u d s
    #: (search parameter, value) pairs of a granular v2 scope; empty for a plain scope.
    constraints: frozenset[tuple[str, str]] = field(default_factory=frozenset)


def parse_scopes(scope: str) -> list[Grant]:
    """The grants of a token's ``scope`` claim."""
    return list(_grants_of(scope))


@functools.lru_cache(maxsize=1024)
def _grants_of(scope: str) -> tuple[Grant, ...]:
    # Every request of a token asks again for the same string: parsed once (the grants are frozen).
    grants = []
    for item in scope.split():
        match = _V2.match(item)
        if match is None:
            continue  # openid, fhirUser, launch/patient, qualified v2 scopes...: no resource access
        context, resource_type, perms, query = match.groups()
        if perms == "read":
            permissions = frozenset("rs")
        elif perms == "write":
            permissions = frozenset("cud")
        elif perms == "*":
            permissions = frozenset("cruds")
        elif re.fullmatch(r"c?r?u?d?s?", perms):
            permissions = frozenset(perms)
        else:
            continue
        if query is None:
            grants.append(Grant(context, resource_type, permissions))
            continue
        constraints = frozenset(parse_qsl(query, keep_blank_values=True))
        if resource_type == "*" or "s" not in permissions or not constraints:
            continue  # only a search of one named type can be held to the constraint
        grants.append(Grant(context, resource_type, frozenset("s"), constraints))
    return tuple(grants)


def constraint_holds(grant: Grant, need: Need, query: Mapping[str, Sequence[str]] | None) -> bool:
    """Whether a granular scope's constraints hold for this request (a GET search of its type)."""
    if query is None or need.write or need.target is not None or need.patient_operation is not None:
        return False
    if grant.resource_type != need.resource_type or any(k.split(":")[0] in _WIDENING for k in query):
        return False
    return all(list(query.get(name, [])) == [value] for name, value in grant.constraints)


def covered(grants: Iterable[Grant], need: Need, query: Mapping[str, Sequence[str]] | None = None) -> bool:
    """Whether some scope grants every permission ``need`` asks for on its type. ``query`` (a GET request's
    parsed query; None otherwise) is what granular v2 scopes are checked against."""
    grants = list(grants)
    for permission in need.permissions:
        if not any(
            g.resource_type in ("*", need.resource_type)
            and permission in g.permissions
            and (not g.constraints or constraint_holds(g, need, query))
            for g in grants
        ):
            return False
    return True
