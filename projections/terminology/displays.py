"""The display of codes, as ``CodeSystem/$lookup`` would give it (R4 codesystem-operation-lookup), for many
codes at once: each code system is found once in the terminology store and walked once for the codes asked,
without building its hierarchy (a 14,000-code catalogue such as CIE-10 is walked in milliseconds, where a
``$lookup`` per code would index it each time).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from projections.db import Tx
from projections.terminology.engine import holds_codes
from projections.terminology.store import TerminologyStore

__all__ = ["displays_in"]


def displays_in(tx: Tx, codes: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(system, code) → display for each code its code system (stored, else the spec's) holds with one;
    codes of systems the store does not hold, or lacks, are left out."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for system, code in codes:
        wanted[system].add(code)
    found: dict[tuple[str, str], str] = {}
    for system, system_codes in wanted.items():
        code_system = TerminologyStore.find(tx, "CodeSystem", system)
        if code_system is None or not holds_codes(code_system):
            continue
        for code, display in _walk(code_system.get("concept") or [], system_codes):
            found[(system, code)] = display
    return found


def _walk(concepts: list[Any], codes: set[str]) -> Iterable[tuple[str, str]]:
    """The (code, display) of the concepts among ``codes``, nested ones included (R4 CodeSystem.concept)."""
    stack = [concepts]
    while stack:
        for concept in stack.pop():
            if not isinstance(concept, dict):
                continue
            code, display = concept.get("code"), concept.get("display")
            if code in codes and isinstance(display, str) and display:
                yield str(code), display
            nested = concept.get("concept")
            if isinstance(nested, list):
                stack.append(nested)
