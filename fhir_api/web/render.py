"""Jinja2 templates and the static files, both shipped inside the package (nothing fetched at runtime)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import Response

from fhir_api.web.i18n import translator
from fhir_api.web.session import Session

__all__ = ["render", "static_file"]

HERE = Path(__file__).resolve().parent
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


@lru_cache(maxsize=1)
def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment


def _with_lang(request: Request, lang: str) -> str:
    """The current page in the other language."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
    params.append(("lang", lang))
    from urllib.parse import urlencode

    return f"{request.url.path}?{urlencode(params)}"


def render(template: str, *, request: Request, session: Session, **context: Any) -> str:
    t = translator(session.lang)
    other = "en" if session.lang == "es" else "es"
    return (
        _environment()
        .get_template(template)
        .render(
            t=t,
            lang=session.lang,
            other_lang_url=_with_lang(request, other),
            session=session,
            path=request.url.path,
            **context,
        )
    )


@lru_cache(maxsize=16)
def _static(name: str) -> tuple[bytes, str] | None:
    path = (HERE / "static" / name).resolve()
    if path.parent != (HERE / "static").resolve() or not path.is_file() or path.suffix not in _STATIC_TYPES:
        return None
    return path.read_bytes(), _STATIC_TYPES[path.suffix]


def static_file(name: str) -> Response:
    found = _static(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    body, media_type = found
    return Response(body, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})
