"""The authorization server (SMART App Launch 2.x, SMART Backend Services, RFC 6749/7636/7662/7009).

- ``routes``: the HTTP endpoints under ``/oauth`` (authorize, token, jwks, introspect, revoke, launch);
- ``pages``: the development login and consent pages (Spanish and English);
- state: ``projections/oauth.py`` (clients, users, codes, refresh tokens, assertion ``jti`` values);
- signing keys: ``fhir_api/auth/signing.py``.
"""

from __future__ import annotations

from fhir_api.oauth.routes import oauth_store, router

__all__ = ["oauth_store", "router"]
