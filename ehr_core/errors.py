"""Errors as data: what went wrong, in OperationOutcome terms, with no HTTP in sight.

Each error names an anomaly category (Blaze's style: ``incorrect``, ``not-found``, ``conflict``...);
``fhir_api`` maps each category to an HTTP status once, in one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "Conflict",
    "Deleted",
    "Forbidden",
    "InvalidResource",
    "Issue",
    "MalformedPatch",
    "NotFound",
    "PatchError",
    "PatchNotApplicable",
    "PreconditionFailed",
    "RecordError",
    "RecordedElsewhere",
    "StoreUnavailable",
    "TooLarge",
    "Unprocessable",
]


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: ``code`` from http://hl7.org/fhir/issue-type."""

    code: str
    diagnostics: str
    expression: str | None = None
    severity: str = "error"


class RecordError(Exception):
    """Base of every error the record reports to a caller."""

    category: ClassVar[str] = "fault"

    def __init__(self, issues: Sequence[Issue] | str, code: str = "processing") -> None:
        self.issues = [Issue(code, issues)] if isinstance(issues, str) else list(issues)
        super().__init__("; ".join(issue.diagnostics for issue in self.issues))


class InvalidResource(RecordError):
    """The request or resource is malformed or does not conform to R4."""

    category = "incorrect"


class Unprocessable(RecordError):
    """Well-formed, but breaks a business rule (e.g. an invalid CURP)."""

    category = "unprocessable"


class NotFound(RecordError):
    category = "not-found"

    def __init__(self, issues: Sequence[Issue] | str, code: str = "not-found") -> None:
        super().__init__(issues, code)


class Deleted(RecordError):
    """The resource existed and was retracted (FHIR delete): reads answer Gone.

    ``version`` and ``last_updated``, when known, name the retraction itself: a read of a deleted resource
    answers with that version's ETag and Last-Modified (R4 §3.1.0.2), so a client sees when it went.
    """

    category = "deleted"

    def __init__(
        self,
        issues: Sequence[Issue] | str,
        code: str = "deleted",
        *,
        version: int | None = None,
        last_updated: str | None = None,
    ) -> None:
        super().__init__(issues, code)
        self.version = version
        self.last_updated = last_updated


class Forbidden(RecordError):
    """The writer may not change this resource: it belongs to another institution's record (DESIGN.md
    "Access": writing to a resource another institution recorded needs an explicit write grant)."""

    category = "forbidden"

    def __init__(self, issues: Sequence[Issue] | str, code: str = "forbidden") -> None:
        super().__init__(issues, code)


class Conflict(RecordError):
    """Another writer got there first (a lost race on the stream version)."""

    category = "conflict"

    def __init__(self, issues: Sequence[Issue] | str, code: str = "conflict") -> None:
        super().__init__(issues, code)


class PreconditionFailed(RecordError):
    """A conditional request's precondition (If-Match, a conditional match count) does not hold."""

    category = "precondition-failed"

    def __init__(self, issues: Sequence[Issue] | str, code: str = "conflict") -> None:
        super().__init__(issues, code)


class RecordedElsewhere(RecordError):
    """The resource lives in another institution's store (a federation), which this write cannot reach atomically."""

    category = "conflict"

    def __init__(self, issues: Sequence[Issue] | str, code: str = "conflict") -> None:
        super().__init__(issues, code)


class StoreUnavailable(RecordError):
    """An institution's store needed to answer is down; nothing was applied (503, retry later)."""

    category = "unavailable"

    def __init__(self, issues: Sequence[Issue] | str, code: str = "transient") -> None:
        super().__init__(issues, code)


class TooLarge(RecordError):
    """A resource larger than the store accepts (``EHR_MAX_RESOURCE_BYTES``): 413, nothing stored."""

    category = "too-large"

    def __init__(self, issues: Sequence[Issue] | str, code: str = "too-long") -> None:
        super().__init__(issues, code)


class PatchError(RecordError):
    """A FHIR ``patch`` (R4 http.html#patch) that cannot be applied; its one issue explains why.

    ``index`` is the 0-based position of the failing operation (the JSON Patch array element, RFC 6902
    §3, or the ``Parameters.parameter``, R4 fhirpatch.html), or ``None`` when the document as a whole is
    wrong. Raised only as one of its two kinds, :class:`MalformedPatch` or :class:`PatchNotApplicable`.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__([Issue("processing", message)])
        self.index = index


class MalformedPatch(PatchError, InvalidResource):
    """The patch document itself is wrong: not an array of operations (RFC 6902 §3), an operation
    missing a member (RFC 6902 §4) or a part (R4 fhirpatch.html), a path that does not parse..."""


class PatchNotApplicable(PatchError, Unprocessable):
    """A well-formed patch that does not apply to this resource: nothing at the path, a failed ``test``
    (RFC 6902 §4.6), an add to a non-repeating element that has a value (R4 fhirpatch.html)..."""
