"""SQL lives in ``projections`` (the views) and ``ehr_core`` (the log); the HTTP layer and the CLI ask queries.

A statement under ``fhir_api/`` puts a table's shape in the HTTP layer: the next change of that table then has
two rooms to look in. This test reads every module under ``fhir_api/`` and fails on a ``SELECT``, ``INSERT``,
``UPDATE`` or ``DELETE`` statement in a string literal passed to ``.execute(`` (or shaped like one anywhere),
unless the module is in ``ALLOWED`` with the reason it stays.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Module (relative to the repository) → why its SQL stays there. Keep it short: move a query into
#: ``projections`` (a function beside its table's view) rather than adding a line here.
ALLOWED: dict[str, str] = {}

_KEYWORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b")
_STATEMENT = re.compile(r"\b(SELECT\b.+\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b", re.DOTALL)


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def sql_in(path: Path) -> list[str]:
    """``line: text`` of each SQL statement in the module at ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = _docstrings(tree)
    found: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "execute":
            for argument in node.args[:1]:
                text = " ".join(_strings(argument))
                if _KEYWORD.search(text):
                    found[node.lineno] = text
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.update({node.lineno: node.value} if _STATEMENT.search(node.value) else {})
    return [f"{line}: {text.strip()[:100]}" for line, text in sorted(found.items())]


def test_no_sql_in_the_http_layer() -> None:
    offending = {}
    for path in sorted((ROOT / "fhir_api").rglob("*.py")):
        name = str(path.relative_to(ROOT))
        statements = sql_in(path)
        if statements and name not in ALLOWED:
            offending[name] = statements
    assert offending == {}, "SQL under fhir_api/: move it into a projections query function " + str(offending)


def test_the_allow_list_names_only_modules_with_sql() -> None:
    """A module that no longer holds SQL leaves the list (so the list stays the truth)."""
    stale = [name for name in ALLOWED if not sql_in(ROOT / name)]
    assert stale == []


def test_the_check_finds_a_statement(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        '"""Handles DELETE [base]/x."""\n'
        "def f(tx, t):\n"
        '    tx.execute(f"SELECT 1 FROM {t} WHERE id = ?", (1,))\n'
        '    q = "UPDATE projection_tracking SET position = ?"\n'
        '    kinds = {"DELETE": "delete"}\n'
    )
    assert [line.split(":")[0] for line in sql_in(module)] == ["3", "4"]
