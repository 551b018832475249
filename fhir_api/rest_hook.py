"""The HTTP client of ``rest-hook`` channels (R4 subscription.html): kept-alive connections, no redirects.

Fifty subscriptions matching one write are fifty requests, sent by the same process that takes the writes:
each request's own cost is what delivery takes from them. The standard library's ``http.client`` costs about
a fifth of the CPU of ``httpx`` per request (measured here: ~80 µs against ~400 µs on loopback), so delivery
uses it directly: one connection per sending thread and endpoint (``http.client`` connections are not
thread-safe), reused while the endpoint keeps it alive. It never follows a redirect (R4 §Security: the
server only talks to the endpoint the subscriber named); a 3xx is an answer like any other.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from urllib.parse import SplitResult, urlsplit

__all__ = ["RestHookClient"]

_Key = tuple[str, str, int | None]


class RestHookClient:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._ssl = ssl.create_default_context()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

    def request(self, method: str, url: str, content: bytes | None, headers: dict[str, str]) -> int:
        """The status the endpoint answered (its body read and dropped). Raises ``OSError`` or
        ``http.client.HTTPException`` when it gave no answer."""
        parts = urlsplit(url)
        key: _Key = (parts.scheme, parts.hostname or "", parts.port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connections: dict[_Key, http.client.HTTPConnection] = self._connections()
        for attempt in (1, 2):
            connection = connections.get(key)
            reused = connection is not None
            if connection is None:
                connection = connections[key] = self._open(parts)
            try:
                connection.request(method, target, body=content, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self._drop(connections, key)
                if reused and attempt == 1:
                    continue  # a kept-alive connection the endpoint had closed meanwhile: once more, anew
                raise
            if response.will_close:
                self._drop(connections, key)
            return response.status
        raise AssertionError("unreachable")  # pragma: no cover

    def _connections(self) -> dict[_Key, http.client.HTTPConnection]:
        found: dict[_Key, http.client.HTTPConnection] | None = getattr(self._local, "connections", None)
        if found is None:
            found = self._local.connections = {}
        return found

    def _open(self, parts: SplitResult) -> http.client.HTTPConnection:
        host = parts.hostname or ""
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(host, parts.port, timeout=self.timeout, context=self._ssl)
        else:
            connection = http.client.HTTPConnection(host, parts.port, timeout=self.timeout)
        with self._lock:
            self._all.append(connection)
        return connection

    def _drop(self, connections: dict[_Key, http.client.HTTPConnection], key: _Key) -> None:
        connection = connections.pop(key)
        connection.close()
        with self._lock:
            self._all.remove(connection)

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()
