"""FHIR XML on the wire: content negotiation and the two conversions, in one place for every interaction.

R4 http.html "Content Types and encodings" (#mime): a server speaks ``application/fhir+json`` and
``application/fhir+xml``; the client picks the answer's format with ``Accept`` (q-values, RFC 9110 §12.5.1)
or the ``_format`` parameter, which overrides it (http.html "General parameters"); a format the server
cannot produce is answered 406. The handlers know only JSON, and stay that way: two ASGI middlewares
translate at the edge.

- :class:`XmlRequestBodies` (innermost, inside :class:`~fhir_api.limits.RequestLimits`, so the body limit
  (413) and arrival time apply to the XML exactly as to JSON): an ``application/fhir+xml`` (or
  ``application/xml``, ``text/xml``) body becomes its R4 JSON form and the request goes on as
  ``application/fhir+json``. The log keeps one form: an XML write is stored as its JSON equivalent.
  Malformed or unsafe XML is a 400 OperationOutcome naming the line (:mod:`ehr_core.resources.xml`). A
  native Binary body stays native for the generic XML types (R4 binary.html: any non-FHIR content type is
  content); only ``application/fhir+xml`` is a Binary resource.
- :class:`FormatNegotiation` (outside auth and the limits, so their refusals come in the format asked
  for too): picks the answer's format; a FHIR JSON answer (resource, Bundle, OperationOutcome...) is turned
  into XML when XML was asked for. Anything else (NDJSON exports, a Binary's native content, the SMART
  configuration) passes through. A Binary read is left to its own rule (R4 binary.html), which is why no
  406 is given under ``/fhir/Binary``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ehr_core.errors import Issue
from ehr_core.resources import json as fhir_json
from ehr_core.resources import xml as fhir_xml
from fhir_api.errors import ApiError, status_of
from fhir_api.outcome import operation_outcome
from fhir_api.request import JSON_MEDIA_TYPES

__all__ = ["FHIR_XML", "FormatNegotiation", "XmlRequestBodies", "negotiate"]

FHIR_XML = "application/fhir+xml; charset=utf-8"
#: R4 http.html #mime: the FHIR XML type, and the generic ones clients send for it.
XML_MEDIA_TYPES = frozenset({"application/fhir+xml", "application/xml+fhir", "application/xml", "text/xml"})
#: ``_format`` values (http.html "General parameters": ``xml``, ``json``, or a MIME type).
_FORMAT_XML = XML_MEDIA_TYPES | {"xml"}
_FORMAT_JSON = JSON_MEDIA_TYPES | {"json"}
#: Answers some FHIR-path endpoints give in a type of their own; asking for them is no reason for a 406.
_OTHER_ANSWERS = frozenset(
    {"application/fhir+ndjson", "application/ndjson", "application/x-pem-file", "text/plain", "text/html"}
)
_JSON = "application/fhir+json; charset=utf-8"
#: Where the XML body is a Binary's own content unless it says it is FHIR (R4 binary.html).
_NATIVE_XML_TYPES = frozenset({"application/xml", "text/xml"})


def negotiate(accept: str | None, format_parameter: str | None) -> str | None:
    """``"json"`` or ``"xml"`` for an answer, or None when nothing the client accepts can be produced.

    ``_format`` wins over ``Accept``. With ``Accept``, the highest q-value wins, and between equal
    q-values a named FHIR type wins over a wildcard; ``*/*``, ``application/*`` or no ``Accept`` at all
    get JSON, the server's default.
    """
    if format_parameter is not None:
        kind = format_parameter.split(";")[0].strip().lower()
        if kind in _FORMAT_XML:
            return "xml"
        if kind in _FORMAT_JSON:
            return "json"
        return None
    if accept is None or not accept.strip():
        return "json"
    best: tuple[float, int] = (0.0, -1)
    chosen: str | None = None
    other = False
    for part in accept.split(","):
        media, *parameters = part.split(";")
        media = media.strip().lower()
        if not media:
            continue
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if quality <= 0.0:
            continue
        if media in XML_MEDIA_TYPES:
            candidate, specific = "xml", 2
        elif media in JSON_MEDIA_TYPES:
            candidate, specific = "json", 2
        elif media in ("*/*", "application/*"):
            candidate, specific = "json", 0
        else:
            # Not a FHIR format: an answer of its own type (NDJSON, PEM...) is not refused for it, but a
            # FHIR format the client also accepts, even with a lower q-value, is preferred to none.
            other = other or media in _OTHER_ANSWERS
            continue
        if (quality, specific) > best:
            best, chosen = (quality, specific), candidate
    return chosen if chosen is not None or not other else "json"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            text: str = value.decode("latin-1")
            return text
    return None


def _format_parameter(scope: Scope) -> str | None:
    query = scope.get("query_string", b"").decode("latin-1")
    if "_format" not in query:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "_format":
            return str(value)
    return None


def _is_binary(path: str) -> bool:
    return path == "/fhir/Binary" or path.startswith("/fhir/Binary/")


async def _answer(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _outcome(code: str, diagnostics: str) -> bytes:
    return operation_outcome([Issue(code, diagnostics)])


class XmlRequestBodies:
    """ASGI middleware: an XML request body becomes its R4 JSON form before any handler reads it."""

    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/fhir"):
            await self.app(scope, receive, send)
            return
        content_type = _header(scope, b"content-type")
        kind = content_type.split(";")[0].strip().lower() if content_type else None
        if kind not in XML_MEDIA_TYPES or (kind in _NATIVE_XML_TYPES and _is_binary(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        chunks = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except ApiError as error:  # over the body limit (413) or too slow (408): RequestLimits' receive says so
            await _answer(send, status_of(error), operation_outcome(error.issues), _JSON)
            return
        body = b"".join(chunks)
        if body.strip():
            try:
                body = fhir_json.dumps(fhir_xml.from_xml(body, self.max_depth))
            except fhir_xml.XmlError as error:
                outcome = _outcome("structure", f"the XML body cannot be read: {error}")
                await _answer(send, 400, outcome, _JSON)
                return
        headers = [
            (key, value)
            for key, value in scope.get("headers", ())
            if key.lower() not in (b"content-type", b"content-length")
        ]
        headers += [(b"content-type", b"application/fhir+json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # what follows the body: a disconnect
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


class FormatNegotiation:
    """ASGI middleware: the answer's format (``Accept``, ``_format``); FHIR JSON answers become XML on request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/fhir"):
            await self.app(scope, receive, send)
            return
        chosen = negotiate(_header(scope, b"accept"), _format_parameter(scope))
        if chosen is None and not _is_binary(path):
            asked = _format_parameter(scope)
            what = f"_format {asked}" if asked is not None else f"Accept {_header(scope, b'accept')}"
            diagnostics = (
                f"{what} names no format this server produces; use application/fhir+json or application/fhir+xml"
            )
            await _answer(send, 406, _outcome("not-supported", diagnostics), _JSON)
            return
        if chosen != "xml":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _XmlAnswer(send))


class _XmlAnswer:
    """``send`` that turns a FHIR JSON answer into FHIR XML (the whole body is needed: it is held)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            content_type = ""
            for key, value in message.get("headers", ()):
                if key.lower() == b"content-type":
                    content_type = value.decode("latin-1").split(";")[0].strip().lower()
            if content_type == "application/fhir+json":
                self.start = message
                return
            await self.send(message)
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        await self._flush()

    async def _flush(self) -> None:
        assert self.start is not None
        body = b"".join(self.chunks)
        content_type = FHIR_XML.encode()
        replaced = {b"content-type"}
        if body.strip():
            try:
                body = fhir_xml.to_xml(_object(body))
                replaced.add(b"content-length")
            except (fhir_json.JsonError, fhir_xml.XmlError, TypeError, ValueError):
                content_type = _JSON.encode()  # not one resource: left as it is
        headers = [(key, value) for key, value in self.start.get("headers", ()) if key.lower() not in replaced]
        headers.append((b"content-type", content_type))
        if b"content-length" in replaced:
            headers.append((b"content-length", str(len(body)).encode()))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


def _object(body: bytes) -> dict[str, Any]:
    value = fhir_json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("not a resource")
    return value
