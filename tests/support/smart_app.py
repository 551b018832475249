"""A tiny static SMART app (tests/e2e/smart_app: ``launch.html`` and ``index.html``) served from loopback by
the test, as a hospital's app would be served from its own origin: the SMART JS client's browser bundle
(``fhir-client.js`` from the pinned npm package) and ``config.js`` naming the client id it is registered as."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

__all__ = ["APP", "SmartApp", "serving", "serving_app"]

APP = Path(__file__).resolve().parents[1] / "e2e" / "smart_app"


@dataclass
class SmartApp:
    origin: str  # http://127.0.0.1:PORT
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def redirect_uri(self) -> str:
        return f"{self.origin}/index.html"


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, app: SmartApp, bundle: Path, *args: Any) -> None:
        self.app, self.bundle = app, bundle
        super().__init__(*args)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/config.js":
            body, kind = b"window.SMART_APP = " + orjson.dumps(self.app.config) + b";", "text/javascript"
        elif path == "/fhir-client.js":
            body, kind = self.bundle.read_bytes(), "text/javascript"
        elif path in ("/launch.html", "/index.html"):
            body, kind = (APP / path.lstrip("/")).read_bytes(), "text/html; charset=utf-8"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures, not every GET
        pass


@contextmanager
def serving(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler``'s HTTP server on a free loopback port, in a thread, until the block ends; its origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def serving_app(node_modules: Path) -> Iterator[SmartApp]:
    """The app on a free loopback port until the block ends; set ``config["clientId"]`` once registered."""
    app = SmartApp("")
    bundle = node_modules / "fhirclient" / "build" / "fhir-client.min.js"
    with serving(partial(_Handler, app, bundle)) as origin:
        app.origin = origin
        yield app
