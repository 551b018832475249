"""Business rules on identifiers, checked on every write before anything is appended.

Called from :meth:`ehr_core.application.RecordApplication._prepare`: a resource that carries an identifier in
the CURP, NSS, RFC or CLUES system must carry a well-formed one (the CURP placeholder is accepted), else
:class:`~ehr_core.errors.Unprocessable` (422) names the identifier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ehr_core.errors import Issue, Unprocessable
from ehr_core.identity.identifiers import (
    CLUES_SYSTEM,
    CURP_PLACEHOLDER,
    CURP_SYSTEM,
    NSS_SYSTEM,
    RFC_SYSTEM,
    InvalidIdentifier,
    parse_clues,
    parse_curp,
    parse_nss,
    parse_rfc,
)

__all__ = ["check_identifiers"]


def _curp(value: str) -> None:
    if value != CURP_PLACEHOLDER:
        parse_curp(value)


_CHECKS: dict[str, tuple[str, Callable[[str], object]]] = {
    CURP_SYSTEM: ("CURP", _curp),
    NSS_SYSTEM: ("NSS", parse_nss),
    RFC_SYSTEM: ("RFC", parse_rfc),
    CLUES_SYSTEM: ("CLUES", parse_clues),
}


def check_identifiers(resource: dict[str, Any]) -> None:
    """Raise Unprocessable listing every malformed identifier in a known Mexican system."""
    identifiers = resource.get("identifier")
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    if not isinstance(identifiers, list):
        return
    resource_type = resource.get("resourceType", "Resource")
    issues: list[Issue] = []
    for index, identifier in enumerate(identifiers):
        if not isinstance(identifier, dict):
            continue
        check = _CHECKS.get(str(identifier.get("system")))
        value = identifier.get("value")
        if check is None or not isinstance(value, str):
            continue
        name, parse = check
        try:
            parse(value)
        except InvalidIdentifier as problem:
            issues.append(
                Issue(
                    "business-rule",
                    f"invalid {name} {value!r} in {identifier['system']}: {problem}",
                    f"{resource_type}.identifier[{index}]",
                )
            )
    if issues:
        raise Unprocessable(issues)
