"""A minimal HTTP/1.1 keep-alive client on asyncio streams (stdlib only): the default load client.

Why not httpx for the load: on this kind of machine httpx spends 0.6-1.5 ms of client CPU per request
(measured: ``--client httpx`` shows it in the cpu column), about as much as the server spends answering,
so on 2 cores the load generator becomes the bottleneck. This client spends ~60 us. It speaks only what
the benchmark needs: one request at a time per connection, ``Content-Length`` or chunked bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["RawConnection", "Reply"]


@dataclass(frozen=True)
class Reply:
    status_code: int
    #: Header names in lower case.
    headers: dict[str, str]
    content: bytes


class RawConnection:
    """One keep-alive connection to ``base_url`` (``http://127.0.0.1:port/prefix``); reconnects if closed."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"need http://host:port/..., got {base_url}")
        self.host, self.port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def get(self, path: str, headers: dict[str, str]) -> Reply:
        return await self.request("GET", path, headers, b"")

    async def post(self, path: str, content: bytes, headers: dict[str, str]) -> Reply:
        return await self.request("POST", path, headers, content)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        lines = [f"{method} {self.prefix}{path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        reader, writer = await self._open()
        writer.write(head + body)  # one write: no Nagle interplay between head and body
        try:
            status_line = await reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server closed an idle keep-alive connection before reading anything: send again, once.
            await self.close()
            reader, writer = await self._open()
            writer.write(head + body)
            status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        received: dict[str, str] = {}
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            received[name.strip().lower()] = value.strip()
        if "content-length" in received:
            content = await reader.readexactly(int(received["content-length"]))
        elif received.get("transfer-encoding", "").lower() == "chunked":
            content = await self._chunked(reader)
        else:
            content = b""
        if received.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, received, content)

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._reader = self._writer = None
