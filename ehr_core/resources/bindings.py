"""Required bindings of ``code`` elements: a code outside its value set is refused before it is stored.

R4 terminologies.html#required: "To be conformant, the concept in this element SHALL be from the specified
value set." The R4B models check types, not codes, so ``Patient.gender: "banana"`` or an Observation with
``status: "not-a-status"`` would otherwise enter the record, and every reader would have to guess what they
mean. The element paths and the codes are spec data, generated into :mod:`ehr_core.spec.required_codes`.
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeAlias

from ehr_core.errors import Issue
from ehr_core.spec.required_codes import ELEMENTS, VALUE_SETS

__all__ = ["required_code_issues"]

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
