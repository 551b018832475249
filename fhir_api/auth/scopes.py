"""SMART scopes (SMART App Launch 2.0 §Scopes and Launch Context): what a token's ``scope`` grants.

v2 ``{patient|user|system}/{Type|*}.{c?r?u?d?s?}`` and v1 ``.read``/``.write``/``.*`` (read = ``rs``,
write = ``cud``). Scopes with v2 query qualifiers (``?category=...``) grant nothing (not enforceable here,
so not trusted); ``openid``, ``fhirUser``, ``launch/patient`` grant no resource access.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fhir_api.auth.needs import Need

__all__ = ["Grant", "covered", "parse_scopes"]

_V2 = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)$")


@dataclass(frozen=True)
class Grant:
    context: str  # patient, user, system
    resource_type: str  # a type or *
    permissions: frozenset[str]  # c r u d s


def parse_scopes(scope: str) -> list[Grant]:
    grants = []
    for item in scope.split():
        match = _V2.match(item)
        if match is None:
            continue  # openid, fhirUser, launch/patient, qualified v2 scopes...: no resource access
        context, resource_type, perms = match.groups()
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
        grants.append(Grant(context, resource_type, permissions))
    return grants


def covered(grants: Iterable[Grant], need: Need) -> bool:
    """Whether some scope grants every permission ``need`` asks for on its type."""
    for permission in need.permissions:
        if not any(g.resource_type in ("*", need.resource_type) and permission in g.permissions for g in grants):
            return False
    return True
