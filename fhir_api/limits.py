"""Limits that protect the server from one request: body size, JSON nesting depth, page size, time.

Each limit answers with an OperationOutcome (R4 §6.1.3) naming the limit and its value, so a client learns
what to change, not only that it failed:

==========================  =========================================  ==================================
limit (``EHR_*`` setting)   answer                                     why this status
==========================  =========================================  ==================================
``MAX_BODY_BYTES``          413, issue ``too-costly``                  RFC 9110 §15.5.14 Content Too Large
``MAX_BUNDLE_ENTRIES``      413, issue ``too-costly``                  the payload is too large *for this
                                                                       server*, though well-formed; 422
                                                                       would say the content is wrong
``MAX_JSON_DEPTH``          400, issue ``too-costly``                  no FHIR R4 resource nests that deep
                                                                       (the HL7 examples reach 21 levels);
                                                                       refused before any validation
``MAX_COUNT``               clamped, no error                          R4 §3.1.1.6.3: "the server is not
                                                                       bound to return the number
                                                                       requested, but cannot return more"
``REQUEST_TIMEOUT_SECONDS`` 408 while the body is still arriving;      408: the client was too slow
                            503 when a read takes longer, or when      (RFC 9110 §15.5.9); 503: the server
                            a write has not reached its append yet     was, retry later (``Retry-After``)
==========================  =========================================  ==================================

Time and writes: a write is never answered "failed" once it may have been stored. The deadline is checked
at the last point before the append (:func:`check_write_deadline`, called by
:func:`fhir_api.request.write_context`); past that point the write runs to the end and is answered with
its real outcome, because a 503 for a stored write would make the client retry and store it twice.
Reads hold no such risk: one that outlives the deadline is abandoned and answered 503.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from typing import Any
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ehr_core.settings import Settings
from fhir_api.errors import ApiError
from fhir_api.outcome import operation_outcome
from fhir_api.responses import FHIR_JSON
from fhir_api.threads import writing

__all__ = [
    "DeadlineExceeded",
    "RequestLimits",
    "check_json_depth",
    "check_write_deadline",
    "clamp_count",
    "deadline_or",
]

_CONTROL = re.compile("[\x00-\x1f\x7f]")

#: Methods whose handler may be abandoned at the deadline: they change nothing (RFC 9110 §9.2.1).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: The monotonic instant by which the current request must have reached its write, if it writes.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("ehr_request_deadline", default=None)


class DeadlineExceeded(ApiError):
    """The request ran out of time before anything was written: 503, safe to retry."""

    def __init__(self, diagnostics: str) -> None:
        super().__init__("unavailable", diagnostics, code="timeout")


class BodyTimeout(ApiError):
    """The client took longer than the limit to send its body: 408, nothing was read or applied."""

    def __init__(self, seconds: float) -> None:
        super().__init__("request-timeout", f"the request body did not arrive within {seconds:g} s", code="timeout")


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"body of {declared} bytes" if declared is not None else "body"
        super().__init__("too-large", f"{size} is over the limit of {limit} bytes", code="too-costly")


def check_write_deadline() -> None:
    """Refuse (503) a write whose request is already past its deadline; call it right before appending."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("the request ran out of time before it was applied; nothing was written, retry later")


def deadline_or(default_seconds: float) -> float:
    """The current request's deadline (monotonic), or ``default_seconds`` from now outside a request."""
    deadline = _deadline.get()
    return deadline if deadline is not None else time.monotonic() + default_seconds


def check_json_depth(value: Any, limit: int) -> None:
    """400 if ``value`` nests objects and arrays deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise ApiError("incorrect", f"JSON nesting is deeper than the limit of {limit} levels", "too-costly")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def clamp_count(requested: int | None, default: int, settings: Settings) -> int:
    """The page size to serve: the requested ``_count`` (or ``default``), at most ``EHR_MAX_COUNT``."""
    return min(default if requested is None else requested, settings.max_count)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            text: str = value.decode("latin-1")
            return text
    return None


def _outcome_message(error: ApiError, status: int) -> tuple[Message, Message]:
    body = operation_outcome(error.issues)
    headers = [(b"content-type", FHIR_JSON.encode()), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    return start, {"type": "http.response.body", "body": body}


class RequestLimits:
    """ASGI middleware: body size and arrival time for every FHIR request, and the request deadline.

    Installed innermost (inside auth and audit), so its refusals are audited like any other answer.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/fhir"):
            await self.app(scope, receive, send)
            return
        if _CONTROL.search(scope.get("path", "")) or _CONTROL.search(
            unquote(scope.get("query_string", b"").decode("latin-1"))
        ):
            # Ids, type names and search values are FHIR strings (R4 §2.24.0.2): no control characters.
            # Refused here once, before any of them reaches a query (PostgreSQL text cannot hold NUL).
            error = ApiError("incorrect", "the URL holds a control character (below U+0020); FHIR strings cannot")
            start, body = _outcome_message(error, 400)
            await send(start)
            await send(body)
            return
        limit = self.settings.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdecimal() and int(declared) > limit:
            start, body = _outcome_message(BodyTooLarge(limit, int(declared)), 413)
            await send(start)
            await send(body)
            return
        seconds = self.settings.request_timeout_seconds
        deadline = time.monotonic() + seconds
        token = _deadline.set(deadline)
        try:
            await self._run(scope, self._limited(receive, limit, deadline, seconds), send, deadline, seconds)
        finally:
            _deadline.reset(token)

    @staticmethod
    def _limited(receive: Receive, limit: int, deadline: float, seconds: float) -> Receive:
        """``receive`` that refuses a body over ``limit`` bytes or still arriving at ``deadline``."""
        received = 0

        async def limited() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise BodyTimeout(seconds) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return limited

    async def _run(self, scope: Scope, receive: Receive, send: Send, deadline: float, seconds: float) -> None:
        if scope.get("method", "GET") not in SAFE_METHODS:
            # Writes are cut off by check_write_deadline before their append, never after it. They wait for the
            # group commit and the projections in threads of their own (fhir_api/threads.py).
            with writing():
                await self.app(scope, receive, send)
            return
        started = False
        abandoned = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if abandoned:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        done, _ = await asyncio.wait({handler}, timeout=max(deadline - time.monotonic(), 0.0))
        if handler in done or started:
            await handler  # finished, or already streaming its answer: let it end (and raise what it raised)
            return
        abandoned = True
        # The read may sit in a worker thread that cannot be interrupted; let it finish unobserved.
        handler.add_done_callback(lambda task: task.cancelled() or task.exception())
        handler.cancel()
        error = DeadlineExceeded(f"the read took longer than the limit of {seconds:g} s; retry later")
        start, body = _outcome_message(error, 503)
        await send(start)
        await send(body)
