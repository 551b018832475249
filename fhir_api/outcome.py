"""OperationOutcome bodies (R4 §6.1.3 "OperationOutcome")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ehr_core.errors import Issue

__all__ = ["operation_outcome"]


def _issue(issue: Issue) -> dict[str, Any]:
    entry: dict[str, Any] = {"severity": issue.severity, "code": issue.code, "diagnostics": issue.diagnostics}
    if issue.expression:
        entry["expression"] = [issue.expression]
    return entry


def operation_outcome(issues: Sequence[Issue]) -> bytes:
    return orjson.dumps({"resourceType": "OperationOutcome", "issue": [_issue(i) for i in issues]})
