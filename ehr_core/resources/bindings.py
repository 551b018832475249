"""Required bindings: a code outside its value set is refused before it is stored.

R4 terminologies.html#required: "To be conformant, the concept in this element SHALL be from the specified
value set." The R4B models check types, not codes, so ``Patient.gender: "banana"`` or an Observation with
``status: "not-a-status"`` would otherwise enter the record, and every reader would have to guess what they
mean. The element paths and the codes are spec data, generated into :mod:`ehr_core.spec.required_codes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any, TypeAlias

from ehr_core.errors import Issue
from ehr_core.spec.required_codes import CODED, CODINGS, ELEMENTS, VALUE_SETS

__all__ = ["required_code_issues", "required_coding_issues"]

#: A JSON key leads to a value set URL (a ``code`` element) or to the keys below it.
_Tree: TypeAlias = dict[str, "str | _Tree"]


@cache
def _tree(resource_type: str) -> _Tree:
    tree: _Tree = {}
    for path, url in ELEMENTS.get(resource_type, ()):
        *parents, leaf = path.split(".")
        node = tree
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                break  # a code element has no children: nothing below it to check
            node = child
        else:
            node[leaf] = url
    return tree


def required_code_issues(resource: dict[str, Any], resource_type: str, limit: int = 20) -> list[Issue]:
    """An issue for each ``code`` value outside its required value set (at most ``limit``)."""
    tree = _tree(resource_type)
    if not tree:
        return []
    issues: list[Issue] = []
    stack: list[tuple[Any, _Tree, str]] = [(resource, tree, resource_type)]
    while stack and len(issues) < limit:
        node, branch, path = stack.pop()
        for key, below in branch.items():
            value = node.get(key)
            if value is None:
                continue
            items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
            for index, item in items:
                where = f"{path}.{key}" if index is None else f"{path}.{key}[{index}]"
                if isinstance(below, str):
                    if isinstance(item, str) and item not in VALUE_SETS[below]:
                        issues.append(_outside(item, below, where))
                elif isinstance(item, dict):
                    stack.append((item, below, where))
    return issues


def _outside(code: str, url: str, where: str) -> Issue:
    codes = sorted(VALUE_SETS[url])
    shown = ", ".join(codes[:12]) + (f", ... ({len(codes)} codes)" if len(codes) > 12 else "")
    message = f"{code!r} is not a code of the required value set {url} ({shown})"
    return Issue("code-invalid", message, where)


def required_coding_issues(resource: dict[str, Any], resource_type: str) -> list[Issue]:
    """An issue for each ``Coding``/``CodeableConcept`` outside its required value set.

    R4 terminologies.html#strength, "required": a Coding SHALL be one of the value set's (system, code)
    pairs; a CodeableConcept SHALL hold at least one coding from the value set. A CodeableConcept whose
    codings all name other systems (or that has text only) is not judged: the value sets here are the
    spec's own code systems, and whether a local code translates one is not knowable without a terminology
    server. A Coding with no code says nothing to check.
    """
    issues: list[Issue] = []
    for path, url, kind in CODED.get(resource_type, ()):
        systems = CODINGS[url]
        for item, where in _items(resource, path.split("."), resource_type):
            if kind == "Coding":
                if not _coding_in(item, systems) and isinstance(item.get("code"), str):
                    issues.append(_coding_outside(item, url, where))
                continue
            codings = [c for c in item.get("coding") or () if isinstance(c, dict)]
            if any(c.get("system") in systems for c in codings) and not any(_coding_in(c, systems) for c in codings):
                shown = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings)
                message = f"no coding of this CodeableConcept ({shown}) is in the required value set {url}"
                message += f" ({_shown(systems)})"
                issues.append(Issue("code-invalid", message, where))
    return issues


def _items(node: Any, keys: list[str], where: str) -> Iterator[tuple[dict[str, Any], str]]:
    key, rest = keys[0], keys[1:]
    if not isinstance(node, dict) or key not in node:
        return
    value = node[key]
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for index, item in items:
        at = f"{where}.{key}" if index is None else f"{where}.{key}[{index}]"
        if rest:
            yield from _items(item, rest, at)
        elif isinstance(item, dict):
            yield item, at


def _coding_in(coding: dict[str, Any], systems: Any) -> bool:
    system, code = coding.get("system"), coding.get("code")
    if system is None:
        return any(code in codes for codes in systems.values())
    return code in systems.get(system, ())


def _shown(systems: Any) -> str:
    pairs = [f"{system}|{code}" for system, codes in sorted(systems.items()) for code in sorted(codes)]
    return ", ".join(pairs[:8]) + (f", ... ({len(pairs)} codes)" if len(pairs) > 8 else "")


def _coding_outside(coding: dict[str, Any], url: str, where: str) -> Issue:
    shown = f"{coding.get('system')}|{coding.get('code')}"
    return Issue(
        "code-invalid", f"{shown} is not a coding of the required value set {url} ({_shown(CODINGS[url])})", where
    )
