"""Trusted issuers: the issuer files, the local development issuer, its tokens, the SMART configuration.

Each trusted issuer is one JSON file in the issuers directory (``EHR_AUTH_ISSUERS_DIR``, default
``<data dir>/issuers``)::

    {"issuer": "https://idp.imss.gob.mx", "institution": "IMSS", "audience": "https://ehr.example/fhir",
     "keys": ["-----BEGIN PUBLIC KEY-----..."], "jwks": {"keys": [...]}, "jwks_file": "imss-jwks.json"}

``keys`` are PEM public keys, ``jwks``/``jwks_file`` a JWK Set (RFC 7517 §5). An issuer only vouches for its
own institution: a token whose ``institution`` claim differs is refused. Outside production the local
development issuer of ``ehr token`` (key ``<data dir>/token-issuer.pem``) is trusted too, for any
institution. ``/.well-known/smart-configuration`` follows SMART App Launch 2.0 §Conformance (this server
is a resource server: tokens come from the issuers). It imports no HTTP framework: the CLI mints with it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ehr_core.settings import Settings
from fhir_api.auth.tokens import Issuer, check_time, jwk_key, sign_eddsa, signed_claims, valid_window

__all__ = [
    "LOCAL_ISSUER",
    "Issuers",
    "issuer_from_file",
    "local_key",
    "mint_development_token",
    "smart_configuration",
]

LOCAL_ISSUER = "urn:ehr-core:local-development-issuer"
#: How many verified tokens :class:`Issuers` remembers (each a few hundred bytes).
_SIGNED_TOKENS = 4096


def issuer_from_file(path: Path) -> Issuer:
    """The issuer one issuer file describes (its keys: PEM, an inline JWKS, or a JWKS file beside it)."""
    data = orjson.loads(path.read_bytes())
    issuer = Issuer(str(data["issuer"]), str(data["institution"]), [], data.get("audience"))
    issuer.token_endpoint = data.get("token_endpoint")
    for pem in data.get("keys", []):
        issuer.keys.append((None, serialization.load_pem_public_key(pem.encode())))
    jwks = data.get("jwks")
    if data.get("jwks_file"):
        jwks = orjson.loads((path.parent / data["jwks_file"]).read_bytes())
    for jwk in (jwks or {}).get("keys", []):
        issuer.keys.append((jwk.get("kid"), jwk_key(jwk)))
    if not issuer.keys:
        raise ValueError(f"{path}: issuer {issuer.issuer} has no keys")
    return issuer


def local_key(settings: Settings) -> Ed25519PrivateKey:
    """The development issuer's key (created on first use, owner-readable only)."""
    path = settings.data_dir / "token-issuer.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


class Issuers:
    """The trusted issuers by ``iss``."""

    def __init__(self, issuers: Iterable[Issuer]) -> None:
        self.by_iss = {i.issuer: i for i in issuers}
        #: Tokens whose signature verified and whose claims hold but for the clock, with when they hold. A
        #: client sends the same token on every request until it expires; the signature and the JSON under it
        #: cannot change, so they are checked once per token, and the clock on every request.
        self._signed: dict[str, tuple[dict[str, Any], tuple[float, float]]] = {}
        self._signed_lock = threading.Lock()

    @classmethod
    def configured(cls, settings: Settings) -> Issuers:
        directory = settings.auth_issuers_dir or settings.data_dir / "issuers"
        files = sorted(directory.glob("*.json")) if directory.is_dir() else []
        # JWKS files may sit beside the issuer files: an issuer file is the one naming an "issuer".
        issuers = [issuer_from_file(p) for p in files if b'"issuer"' in p.read_bytes()]
        if not settings.production:
            local = local_key(settings).public_key()
            issuers.append(Issuer(LOCAL_ISSUER, "*", [(None, local)]))
        return cls(issuers)

    def verify(self, token: str, now: float | None = None) -> dict[str, Any]:
        """The claims of ``token`` if one of these issuers signed it and it checks out (else TokenError)."""
        claims = self.verified_before(token, now)
        if claims is not None:
            return claims
        claims, issuer = signed_claims(token, self.by_iss)
        window = valid_window(claims, issuer)  # a refusal here is for good: the token is not kept
        with self._signed_lock:
            if len(self._signed) >= _SIGNED_TOKENS:
                self._signed.pop(next(iter(self._signed)))  # the oldest: insertion order
            self._signed[token] = (claims, window)
        check_time(claims, window, time.time() if now is None else now)
        return dict(claims)  # the caller's own copy: the cached claims never change

    def verified_before(self, token: str, now: float | None = None) -> dict[str, Any] | None:
        """The claims of a token these issuers already verified, once the clock is inside its validity (else
        TokenError); None for a token not seen yet. A dictionary lookup and two comparisons: cheap enough for
        the event loop, where the signature check is not."""
        signed = self._signed.get(token)
        if signed is None:
            return None
        claims, window = signed
        check_time(claims, window, time.time() if now is None else now)
        return dict(claims)


def mint_development_token(settings: Settings, claims: dict[str, Any], minutes: int = 60) -> str:
    """A token from the local development issuer (refused in production)."""
    if settings.production:
        raise RuntimeError("the local development issuer does not exist with EHR_ENV=production")
    key = local_key(settings)
    now = int(time.time())
    payload = {"iss": LOCAL_ISSUER, "iat": now, "nbf": now, "exp": now + minutes * 60, **claims}
    return sign_eddsa(key, payload)


def smart_configuration(settings: Settings, base: str | None = None) -> dict[str, Any]:
    """``/.well-known/smart-configuration`` (SMART App Launch 2.x §Conformance). ``base`` is the server's root
    as the client reached it: its authorization server (``/oauth``) issues tokens; trusted institution
    issuers are listed too. ``capabilities`` name exactly what works: EHR and standalone launch (with the
    patient picker), public and asymmetric confidential clients, OpenID Connect id_tokens naming the
    Practitioner, refresh tokens (``offline_access``), v1 and v2 scopes; none with authentication disabled."""
    issuers = [] if settings.auth_disabled else list(Issuers.configured(settings).by_iss.values())
    endpoints = [i.token_endpoint for i in issuers if i.token_endpoint]
    config: dict[str, Any] = {
        "issuer": issuers[0].issuer if len(issuers) == 1 else None,
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "response_types_supported": ["code"],
        "scopes_supported": [
            "system/*.rs",
            "system/*.cruds",
            "user/*.cruds",
            "user/*.rs",
            "patient/*.rs",
            "patient/*.cruds",
            "user/*.read",
            "user/*.write",
            "patient/*.read",
            "openid",
            "fhirUser",
            "profile",
            "launch",
            "launch/patient",
            "launch/encounter",
            "offline_access",
            "online_access",
        ],
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "client-public",
            "client-confidential-asymmetric",
            "sso-openid-connect",
            "context-ehr-patient",
            "context-ehr-encounter",
            "context-standalone-patient",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
        ],
        "code_challenge_methods_supported": ["S256"],
        "trusted_issuers": [{"issuer": i.issuer, "institution": i.institution} for i in issuers],
        "authentication": "disabled-for-development" if settings.auth_disabled else "required",
    }
    if settings.auth_disabled:
        # No token is asked for: no launch or client kind is needed, and no endpoint is named, so a SMART
        # client treats the server as open (SMART App Launch 2.x §Conformance).
        config["capabilities"] = []
    if endpoints:
        config["token_endpoint"] = endpoints[0]
    if base is not None and not settings.auth_disabled:
        root = base.rstrip("/")
        config.update(
            {
                "issuer": f"{root}/oauth",
                "authorization_endpoint": f"{root}/oauth/authorize",
                "token_endpoint": f"{root}/oauth/token",
                "jwks_uri": f"{root}/oauth/jwks",
                "introspection_endpoint": f"{root}/oauth/introspect",
                "revocation_endpoint": f"{root}/oauth/revoke",
            }
        )
    return {k: v for k, v in config.items() if v is not None}
