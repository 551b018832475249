"""Authentication and the request decision, one module per job:

- ``tokens``: compact JWS / JWT verification and signing (RFC 7515, RFC 7519);
- ``issuers``: the trusted issuers, the local development issuer and its tokens (``ehr token``), the SMART
  configuration;
- ``scopes``: SMART App Launch 2.0 scopes and what they grant;
- ``needs``: what a request needs (the permissions on a type an interaction asks for);
- ``decision``: the caller, and whether their scopes and the access policy allow the request;
- ``middleware``: the ASGI middleware that says 401 or 403, or passes the caller on.

``tokens``, ``issuers``, ``scopes`` and ``needs`` import no HTTP framework: the CLI mints tokens with them
(``lint-imports`` forbids it ``decision`` and ``middleware``). The names below are imported from here by the
HTTP layer; ``decision``'s and ``middleware``'s load on first use, so importing this package for a token
loads no HTTP framework either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_api.auth.issuers import LOCAL_ISSUER, Issuers, mint_development_token, smart_configuration
from fhir_api.auth.issuers import local_key as _local_key
from fhir_api.auth.needs import Need, entry_need, need_of
from fhir_api.auth.scopes import Grant, covered, parse_scopes
from fhir_api.auth.tokens import TokenError

if TYPE_CHECKING:
    from fhir_api.auth.decision import Caller, caller_of, scope_refusal, viewer_of
    from fhir_api.auth.middleware import AuthMiddleware

__all__ = [
    "LOCAL_ISSUER",
    "AuthMiddleware",
    "Caller",
    "Grant",
    "Issuers",
    "Need",
    "TokenError",
    "_local_key",
    "caller_of",
    "covered",
    "entry_need",
    "mint_development_token",
    "need_of",
    "parse_scopes",
    "scope_refusal",
    "smart_configuration",
    "viewer_of",
]

_LAZY = {
    "Caller": "fhir_api.auth.decision",
    "caller_of": "fhir_api.auth.decision",
    "scope_refusal": "fhir_api.auth.decision",
    "viewer_of": "fhir_api.auth.decision",
    "AuthMiddleware": "fhir_api.auth.middleware",
}


def __getattr__(name: str) -> Any:
    """The HTTP-side names, imported when first asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
