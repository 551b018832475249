"""Errors mapped once: every failure becomes an OperationOutcome with its status, never a stack trace.

The domain raises :class:`~ehr_core.errors.RecordError` subclasses that name an anomaly category;
this module alone decides the HTTP status for each (Blaze's "errors as data").
"""

from __future__ import annotations

import logging
import sqlite3

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ehr_core.errors import InvalidResource, Issue, RecordError
from fhir_api.outcome import operation_outcome
from fhir_api.responses import FHIR_JSON

__all__ = ["ApiError", "install_error_handlers", "outcome_response"]

log = logging.getLogger(__name__)

STATUS: dict[str, int] = {
    "incorrect": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not-found": 404,
    "method-not-allowed": 405,
    "not-acceptable": 406,
    "conflict": 409,
    "deleted": 410,
    "precondition-failed": 412,
    "too-large": 413,
    "unsupported-media-type": 415,
    "unprocessable": 422,
    "unavailable": 503,
    "fault": 500,
}

_HTTP_CODES: dict[int, str] = {
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    413: "too-costly",
    415: "not-supported",
}


class ApiError(RecordError):
    """An error found by the HTTP layer itself (media type, body size, headers)."""

    def __init__(self, category: str, diagnostics: str, code: str = "invalid") -> None:
        super().__init__([Issue(code, diagnostics)])
        self.api_category = category


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> Response:
    return Response(operation_outcome(issues), status_code=status, media_type=FHIR_JSON, headers=headers)


def _record_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, RecordError)
    category = error.api_category if isinstance(error, ApiError) else error.category
    return outcome_response(STATUS[category], error.issues)


def _validation_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    issues = [
        Issue("invalid", str(detail.get("msg")), ".".join(str(p) for p in detail.get("loc", ())))
        for detail in error.errors()
    ]
    return outcome_response(400, issues)


def _http_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = _HTTP_CODES.get(error.status_code, "processing")
    return outcome_response(error.status_code, [Issue(code, str(error.detail))], dict(error.headers or {}))


_SQLITE_UNAVAILABLE = ("locked", "disk i/o", "readonly", "read-only", "full", "unable to open")


def _database_unavailable(request: Request, error: Exception) -> Response:
    # A lost or refused database connection is the server's state, not the request's fault: 503, retry later.
    # SQLite reports programming errors with the same class, so only its "busy/disk" kinds count here.
    if isinstance(error, sqlite3.OperationalError) and not any(k in str(error).lower() for k in _SQLITE_UNAVAILABLE):
        return _unexpected(request, error)
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, error)
    issue = Issue("transient", "the database is not available right now; nothing was applied, retry later")
    return outcome_response(503, [issue], {"Retry-After": "1"})


def _unexpected(request: Request, error: Exception) -> Response:
    # The trace goes to the server log with the request id; the caller only learns that it failed.
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return outcome_response(500, [Issue("exception", "internal error; the request was not applied")])


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RecordError, _record_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_exception_handler(sqlite3.OperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


def invalid(diagnostics: str, expression: str | None = None) -> InvalidResource:
    return InvalidResource([Issue("invalid", diagnostics, expression)])
