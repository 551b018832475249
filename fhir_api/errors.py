"""Errors mapped once: every failure becomes an OperationOutcome with its status, never a stack trace.

The domain raises :class:`~ehr_core.errors.RecordError` subclasses that name an anomaly category;
this module alone decides the HTTP status for each (Blaze's "errors as data"), and the response headers an
error implies (:func:`headers_of`): a handler raises, it never builds an error response by hand.
"""

from __future__ import annotations

import logging
import sqlite3

import psycopg
from eventsourcing import persistence
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ehr_core.errors import Deleted, InvalidResource, Issue, RecordError
from fhir_api.outcome import operation_outcome
from fhir_api.responses import FHIR_JSON, etag, http_date

__all__ = ["ApiError", "headers_of", "install_error_handlers", "outcome_response", "status_of"]

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
    "request-timeout": 408,  # The body did not arrive in time (fhir_api/limits.py)
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
    """An error found by the HTTP layer itself (media type, body size, headers); ``headers`` go with its answer."""

    def __init__(
        self, category: str, diagnostics: str, code: str = "invalid", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__([Issue(code, diagnostics)])
        self.api_category = category
        self.headers = dict(headers or {})


def headers_of(error: RecordError) -> dict[str, str] | None:
    """The response headers an error carries: its own (``ApiError``), or what its data implies."""
    if isinstance(error, ApiError):
        return error.headers or None
    if isinstance(error, Deleted) and error.version is not None:
        # The deleted version's ETag (and when it was deleted): R4 §3.1.0.2, read of a deleted resource
        headers = {"ETag": etag(error.version)}
        if error.last_updated is not None:
            headers["Last-Modified"] = http_date(error.last_updated)
        return headers
    return None


def status_of(error: RecordError) -> int:
    """The HTTP status answering ``error``: the one its category maps to in :data:`STATUS`."""
    return STATUS[error.api_category if isinstance(error, ApiError) else error.category]


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> Response:
    return Response(operation_outcome(issues), status_code=status, media_type=FHIR_JSON, headers=headers)


async def _record_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, RecordError)
    return outcome_response(status_of(error), error.issues, headers_of(error))


async def _validation_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    issues = [
        Issue("invalid", str(detail.get("msg")), ".".join(str(p) for p in detail.get("loc", ())))
        for detail in error.errors()
    ]
    return outcome_response(400, issues)


async def _http_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = _HTTP_CODES.get(error.status_code, "processing")
    return outcome_response(error.status_code, [Issue(code, str(error.detail))], dict(error.headers or {}))


_SQLITE_UNAVAILABLE = ("locked", "disk i/o", "readonly", "read-only", "full", "unable to open")


async def _database_unavailable(request: Request, error: Exception) -> Response:
    # A lost or refused database connection is the server's state, not the request's fault: 503, retry later.
    # SQLite reports programming errors with the same class, so only its "busy/disk" kinds count here.
    cause = error.__cause__ if isinstance(error, persistence.PersistenceError) else error
    if isinstance(cause, sqlite3.OperationalError) and not any(k in str(cause).lower() for k in _SQLITE_UNAVAILABLE):
        return await _unexpected(request, error)
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, error)
    if request.method not in ("GET", "HEAD") and _connection_lost(cause):
        # The connection died while a statement was in flight, possibly during its COMMIT: the
        # server cannot know whether the write was stored, and must not claim it was not (tests/faults).
        unknown = "the database connection was lost during the request; the write may have been applied: read it "
        unknown += "back (or retry as a conditional create / update with its id) before sending it again"
        return outcome_response(503, [Issue("transient", unknown)], {"Retry-After": "1"})
    issue = Issue("transient", "the database is not available right now; nothing was applied, retry later")
    return outcome_response(503, [issue], {"Retry-After": "1"})


_LOST = ("server closed the connection", "consuming input failed", "flush request failed", "terminating connection")


def _connection_lost(error: BaseException | None) -> bool:
    """A connection that broke mid-statement (not one refused before anything was sent)."""
    if isinstance(error, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown):
        return True
    return isinstance(error, psycopg.OperationalError) and any(k in str(error) for k in _LOST)


async def _read_only_or_unexpected(request: Request, error: Exception) -> Response:
    # A database (or standby) that refuses writes — SQLSTATE 25006 read_only_sql_transaction —
    # is unavailable for writing, not broken: 503, nothing was applied. Other internal errors stay 500.
    cause = error.__cause__ if isinstance(error, persistence.PersistenceError) else error
    if isinstance(cause, psycopg.errors.ReadOnlySqlTransaction):
        return await _database_unavailable(request, error)
    return await _unexpected(request, error)


async def _unexpected(request: Request, error: Exception) -> Response:
    # The trace goes to the server log with the request id; the caller only learns that it failed.
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return outcome_response(500, [Issue("exception", "internal error; the request was not applied")])


def install_error_handlers(app: FastAPI) -> None:
    # Coroutines, although none awaits anything: Starlette runs a plain-function handler in a worker thread,
    # one more hand-off for every refusal (a 403, a 404) to build a few bytes.
    app.add_exception_handler(RecordError, _record_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    # A connection closed under the request (server restart), and the event store's own wrappers
    # of the same failures (eventsourcing retries them, then raises these).
    app.add_exception_handler(psycopg.InterfaceError, _database_unavailable)
    app.add_exception_handler(persistence.OperationalError, _database_unavailable)
    app.add_exception_handler(persistence.InterfaceError, _database_unavailable)
    app.add_exception_handler(psycopg.InternalError, _read_only_or_unexpected)
    app.add_exception_handler(persistence.InternalError, _read_only_or_unexpected)
    app.add_exception_handler(sqlite3.OperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


def invalid(diagnostics: str, expression: str | None = None) -> InvalidResource:
    return InvalidResource([Issue("invalid", diagnostics, expression)])
