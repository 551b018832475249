"""What the token search modifiers ``:in``, ``:not-in``, ``:above`` and ``:below`` need of the terminology
(R4 search.html#token): the codes of a value set, and a code with its descendants or its ancestors in its code
system's hierarchy, looked up in the terminology store (:mod:`.store`) when the search runs.

The answer is the set of ``(system, code)`` pairs a search's SQL then matches; the search index holds codes,
not their meaning, so the hierarchy and the expansion come from here. Errors are :mod:`ehr_core.errors` data,
and none of them is a silent empty answer:

- a value set this server does not know is 400 (``not-found``): the search cannot be run as asked;
- a value set that cannot be expanded here, or one over :data:`~.engine.MAX_EXPANSION` codes, is 422
  (``too-costly`` or ``not-supported``, as ``$expand`` answers, :mod:`.engine`);
- ``:above``/``:below`` on a code system this server does not hold (or holds only by name, content
  ``not-present``), or on a code that system does not have, is 400: subsumption needs the hierarchy.
"""

from __future__ import annotations

from typing import Any

from ehr_core.errors import InvalidResource, Issue, Unprocessable
from projections.db import Tx
from projections.terminology.engine import MAX_EXPANSION, CodeSystemIndex, expansion_terms
from projections.terminology.store import TerminologyStore

__all__ = ["TerminologyCodes"]


class TerminologyCodes:
    """One search's look-ups, in its transaction (the search and its codes see one state of the views)."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self._systems: dict[str, CodeSystemIndex | None] = {}

    def value_set(self, name: str, reference: str, base: str | None) -> list[tuple[str, str]]:
        """The ``(system, code)`` pairs of the expansion of the value set ``reference`` names (R4 search.html
        ``:in``: "the reference may be literal (to an address where the value set can be found) or logical
        (a reference to ValueSet.url)"): ``ValueSet/[id]`` or ``[base]/ValueSet/[id]``, else a canonical url
        (``url|version`` names a version)."""
        value_set = self._find_value_set(reference, base)
        if value_set is None:
            message = f"search parameter {name}: the value set {reference} is not known to this server"
            raise InvalidResource([Issue("not-found", message, name)])
        terms = expansion_terms(TerminologyStore.resolver(self.tx), value_set)
        return list(dict.fromkeys((term.system, term.code) for term in terms))

    def _find_value_set(self, reference: str, base: str | None) -> dict[str, Any] | None:
        local = reference
        if base and reference.startswith(base.rstrip("/") + "/"):
            local = reference[len(base.rstrip("/")) + 1 :]
        kind, _, resource_id = local.partition("/")
        if kind == "ValueSet" and resource_id and "/" not in resource_id:
            found = TerminologyStore.read(self.tx, "ValueSet", resource_id)
            if found is not None:
                return found
        url, _, version = reference.partition("|")
        return TerminologyStore.find(self.tx, "ValueSet", url, version or None)

    def subsumption(self, name: str, system: str, code: str, above: bool) -> list[str]:
        """``code`` and every code below it (``:below``) or above it (``:above``) in ``system``'s hierarchy
        (R4 codesystem.html: nesting and the ``parent``/``child`` properties)."""
        index = self._code_system(system)
        modifier = "above" if above else "below"
        if index is None:
            raise InvalidResource(
                [Issue("not-supported", f"search parameter {name}: :{modifier} needs the hierarchy of the code "
                                        f"system {system}, which this server does not hold", name)]
            )  # fmt: skip
        concept = index.get(code)
        if concept is None:
            raise InvalidResource(
                [Issue("not-found", f"search parameter {name}: the code {code!r} is not in the code system {system}"
                                    f" as this server holds it", name)]
            )  # fmt: skip
        related = sorted(index.ancestors(concept.code)) if above else index.descendants(concept.code)
        codes = [concept.code, *related]
        if len(codes) > MAX_EXPANSION:
            raise Unprocessable(
                [Issue("too-costly", f"search parameter {name}: {system}|{code} has over {MAX_EXPANSION} codes "
                                     f"{modifier} it: narrow the search", name)]
            )  # fmt: skip
        return codes

    def _code_system(self, system: str) -> CodeSystemIndex | None:
        if system not in self._systems:
            url, _, version = system.partition("|")
            found = TerminologyStore.find(self.tx, "CodeSystem", url, version or None)
            # The spec names SNOMED CT, LOINC... by CodeSystems of content not-present: no hierarchy to walk.
            held = found is not None and found.get("content") not in ("not-present", "supplement")
            self._systems[system] = CodeSystemIndex(found) if held and found is not None else None
        return self._systems[system]
