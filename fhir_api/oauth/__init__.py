"""The authorization server (SMART App Launch 2.x, SMART Backend Services, RFC 6749/7636/7662/7009).

- ``routes``: the HTTP endpoints under ``/oauth`` (authorize, token, jwks, introspect, revoke, launch);
- ``openid``: signing users in at their institution's OpenID Connect provider (the production path);
- ``pages``: the login and consent pages (Spanish and English), the development user store's form;
- state: ``projections/oauth.py`` (clients, users, codes, refresh tokens, assertion ``jti`` values);
- signing keys: ``fhir_api/auth/signing.py``.
"""

from __future__ import annotations

from fastapi import APIRouter

from fhir_api.oauth import openid, routes
from fhir_api.oauth.routes import oauth_store

__all__ = ["oauth_store", "router"]

router = APIRouter()
router.include_router(routes.router)
router.include_router(openid.router)
