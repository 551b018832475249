"""The web view's only way to the record: FHIR requests dispatched in process through the whole app.

A page never reads the views itself. It sends the same FHIR request an API client would send — through
the audit middleware (so every page view leaves its audit entries: who saw what, from which address),
the auth middleware (bearer token from the login cookie, SMART scopes, the cross-institution access
policy and break-the-glass) and the FHIR routes — and renders the answer. No network hop: the request is
an ASGI call into the same application object.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.types import Message

from fhir_api.web.session import Session

__all__ = ["FhirAnswer", "InternalFhir"]


@dataclass
class FhirAnswer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None

    def problem(self) -> str:
        """The OperationOutcome's diagnostics (what the API said was wrong), or the status line."""
        document = self.json()
        if isinstance(document, dict) and document.get("resourceType") == "OperationOutcome":
            texts = [
                str(i.get("diagnostics") or i.get("code")) for i in document.get("issue", []) if isinstance(i, dict)
            ]
            if texts:
                return "; ".join(texts)
        return f"HTTP {self.status}"


class InternalFhir:
    """FHIR calls on behalf of the browser's user (``session``), from the browser's address."""

    def __init__(self, request: Request, session: Session) -> None:
        self.request = request
        self.session = session

    def _headers(
        self, body: bytes | None, break_glass: str | None, content_type: bytes = b"application/fhir+json"
    ) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = [
            (b"host", self.request.headers.get("host", "localhost").encode("latin-1")),
            (b"accept", b"application/fhir+json"),
            (b"user-agent", b"ehr-core-web"),
        ]
        request_id = self.request.headers.get("x-request-id")
        if request_id:
            headers.append((b"x-request-id", request_id.encode("latin-1")))
        if self.session.token:
            headers.append((b"authorization", f"Bearer {self.session.token}".encode("latin-1")))
        else:  # auth disabled for development: the X-EHR-* headers name the caller (fhir_api/request.py)
            for name, value in self.session.development_headers().items():
                headers.append((name.encode("latin-1"), value.encode("utf-8")))
        if break_glass:
            headers.append((b"x-ehr-break-glass", break_glass.encode("utf-8")))
        if body is not None:
            headers.append((b"content-type", content_type))
            headers.append((b"content-length", str(len(body)).encode()))
        return headers

    async def call(
        self,
        method: str,
        path: str,
        params: dict[str, str] | list[tuple[str, str]] | str | None = None,
        body: Any = None,
        break_glass: str | None = None,
        form: dict[str, str] | None = None,
    ) -> FhirAnswer:
        """``form``: an ``application/x-www-form-urlencoded`` body instead of JSON (the OAuth token endpoint)."""
        query = params if isinstance(params, str) else urlencode(params or {})
        payload = orjson.dumps(body) if body is not None else urlencode(form).encode() if form is not None else None
        content_type = b"application/x-www-form-urlencoded" if form is not None else b"application/fhir+json"
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": self.request.url.scheme,
            "server": self.request.scope.get("server"),
            "client": self.request.scope.get("client"),
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode("latin-1"),
            "headers": self._headers(payload, break_glass, content_type),
            "state": {},
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload or b"", "more_body": False}
            await asyncio.Event().wait()  # the request body is complete; nothing else will arrive
            return {"type": "http.disconnect"}

        status = 500
        headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.request.app(scope, receive, send)
        return FhirAnswer(status, b"".join(chunks), headers)

    async def get(
        self, path: str, params: dict[str, str] | list[tuple[str, str]] | str | None = None, **kw: Any
    ) -> FhirAnswer:
        return await self.call("GET", path, params, **kw)

    async def post(self, path: str, body: Any, **kw: Any) -> FhirAnswer:
        return await self.call("POST", path, None, body, **kw)
