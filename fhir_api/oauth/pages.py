"""The login and consent pages, in Spanish and English.

The login page offers "sign in with <institution>" for each OpenID Connect provider configured for the
client's institution (``EHR_OIDC_PROVIDERS``, the production path), and, outside production, the local
user store's form, announced as development-only (like the development master key).
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

__all__ = ["consent_page", "error_page", "login_page"]

_BANNER = (
    '<p role="alert" style="background:#fde68a;padding:.5em"><strong>Solo para desarrollo / Development only'
    "</strong>: usuarios locales de prueba, nunca con datos reales / local test users, never with real data.</p>"
)


def _page(title: str, body: str, development: bool = True) -> str:
    banner = _BANNER if development else ""
    return (
        f'<!doctype html><html lang="es"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title></head>"
        f"<body>{banner}<h1>{escape(title)}</h1>{body}</body></html>"
    )


def _hidden(fields: dict[str, str]) -> str:
    return "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items())


def login_page(
    fields: dict[str, str],
    client_name: str,
    message: str | None = None,
    providers: dict[str, str] | None = None,
    local: bool = True,
) -> str:
    """``providers``: {provider key: display name}, each a link to ``/oauth/authorize/openid``; ``local``:
    the development user store's form (never in production)."""
    error = f'<p role="alert">{escape(message)}</p>' if message else ""
    links = "".join(
        f'<p><a href="/oauth/authorize/openid?{escape(urlencode({"provider": key, **fields}))}" role="button">'
        f"Entrar con {escape(name)} / Sign in with {escape(name)}</a></p>"
        for key, name in (providers or {}).items()
    )
    form = (
        '<form method="post" action="/oauth/authorize/login">'
        f"{_hidden(fields)}"
        '<label>Usuario / User <input name="username" autocomplete="username" required></label><br>'
        '<label>Contraseña / Password <input name="password" type="password" autocomplete="current-password" '
        "required></label><br>"
        '<button type="submit">Entrar / Sign in</button></form>'
        if local
        else ""
    )
    return _page(
        "Iniciar sesión / Sign in",
        f"<p>{escape(client_name)} solicita acceso / requests access.</p>{error}{links}{form}",
        development=local,
    )


def consent_page(
    request_id: str, client_name: str, scopes: list[str], patients: list[str] | None, development: bool = True
) -> str:
    items = "".join(f"<li><code>{escape(s)}</code></li>" for s in scopes)
    picker = ""
    if patients is not None:
        options = "".join(f'<option value="{escape(p)}">Patient/{escape(p)}</option>' for p in patients)
        picker = f'<label>Paciente / Patient <select name="patient" required>{options}</select></label><br>'
    return _page(
        "Autorizar / Authorize",
        f"<p>{escape(client_name)} solicita estos permisos / asks for these permissions:</p><ul>{items}</ul>"
        '<form method="post" action="/oauth/authorize/consent">'
        f"{_hidden({'request_id': request_id})}{picker}"
        '<button type="submit" name="decision" value="allow">Permitir / Allow</button> '
        '<button type="submit" name="decision" value="deny">Rechazar / Deny</button></form>',
        development,
    )


def error_page(error: str, description: str) -> str:
    return _page("Error", f"<p><code>{escape(error)}</code>: {escape(description)}</p>", development=False)
