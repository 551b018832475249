"""Bearer tokens: compact JWS (RFC 7515) carrying JWT claims (RFC 7519), verified against trusted issuers' keys.

``alg`` is one of ``EdDSA`` (RFC 8037), ``ES256``, ``RS256`` (RFC 7518 §3.1), never ``none`` or HMAC: a
resource server holding a shared secret could mint the tokens it checks. Required claims: ``iss``, ``exp``,
``institution``, ``scope``; ``aud`` is checked when the issuer names one, ``nbf``/``iat`` when present.
Which issuers are trusted, and for which institution, is ``fhir_api.auth.issuers``' job; this module only
reads and checks a token against the :class:`Issuer` its ``iss`` names, and signs one for the development
issuer. It imports no HTTP framework: the ``ehr token`` command mints with it.
"""

from __future__ import annotations

import base64
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

__all__ = [
    "ALGS",
    "Issuer",
    "TokenError",
    "check_claims",
    "check_time",
    "claimed_issuer",
    "joserfc_key",
    "jwk_key",
    "sign_eddsa",
    "signed_claims",
    "valid_window",
    "verify_token",
]

# RFC 9864 deprecates the polymorphic "EdDSA" name in favour of "Ed25519"; tokens already issued carry it,
# so it stays accepted here (the curve is pinned by the key: Ed25519 only) and joserfc's warning is silenced
# around the calls that use it.

ALGS = ("EdDSA", "ES256", "RS256")
_LEEWAY = 60
#: Bearer tokens longer than this are refused unread (a few claims and a signature fit in far less).
_MAX_TOKEN_CHARS = 8192
#: The longest a token may live, in seconds (exp - iat, and exp - now).
_MAX_LIFETIME = 24 * 3600


class TokenError(Exception):
    """Why a token is not accepted (said in the 401's OperationOutcome)."""


@dataclass
class Issuer:
    """A trusted issuer: its ``iss``, the institution it vouches for, its public keys."""

    issuer: str
    institution: str  # "*" for the local development issuer
    keys: list[tuple[str | None, Any]] = field(default_factory=list)  # (kid, public key)
    audience: str | None = None
    token_endpoint: str | None = None


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """RFC 7519 §4.1.4-6: exp, nbf and iat are NumericDate values (JSON numbers); anything else is refused."""
    value = claims.get(name)
    if value is None:
        return None
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.nan
    if not math.isfinite(number):
        raise TokenError(f"the token's {name} is not a NumericDate (a JSON number of seconds)")
    return number


def _b64url(text: str) -> bytes:
    """RFC 7515 §2: base64url without padding."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwk_key(jwk: dict[str, Any]) -> Any:
    """The public key of a JWK (RFC 7517; OKP keys: RFC 8037)."""
    kty = jwk.get("kty")
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        return Ed25519PublicKey.from_public_bytes(_b64url(jwk["x"]))
    if kty == "EC" and jwk.get("crv") == "P-256":
        x, y = (int.from_bytes(_b64url(jwk[c]), "big") for c in ("x", "y"))
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    if kty == "RSA":
        n, e = (int.from_bytes(_b64url(jwk[c]), "big") for c in ("n", "e"))
        return rsa.RSAPublicNumbers(e, n).public_key()
    raise ValueError(f"unsupported JWK kty={kty!r} crv={jwk.get('crv')!r}")


def _fits(key: Any, alg: str) -> bool:
    if alg == "EdDSA":
        return isinstance(key, Ed25519PublicKey)
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    return isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048


def joserfc_key(key: Any) -> Any:
    """The joserfc key of a ``cryptography`` public or private key (the library does the JWS arithmetic)."""
    if isinstance(key, Ed25519PublicKey | Ed25519PrivateKey):
        return OKPKey.import_key(key)
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return ECKey.import_key(key)
    return RSAKey.import_key(key)


def _verify_signature(key: Any, alg: str, token: str) -> bool:
    """RFC 7515 §5.2 via joserfc (ES256's R || S form, RFC 7518 §3.4, included)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="EdDSA is deprecated")
            jws.deserialize_compact(token, joserfc_key(key), algorithms=[alg])
    except (JoseError, ValueError):
        return False
    return True


def verify_token(token: str, by_iss: Mapping[str, Issuer], now: float | None = None) -> dict[str, Any]:
    """The claims of ``token`` once its signature, times, audience and institution check out."""
    claims, issuer = signed_claims(token, by_iss)
    check_claims(claims, issuer, now)
    return claims


def claimed_issuer(token: str) -> str | None:
    """The ``iss`` a token claims, unverified: only to choose which keys verify it (None: unreadable)."""
    parts = token.split(".")
    if len(token) > _MAX_TOKEN_CHARS or len(parts) != 3:
        return None
    try:
        claims = orjson.loads(_b64url(parts[1]))
    except (ValueError, orjson.JSONDecodeError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


def signed_claims(token: str, by_iss: Mapping[str, Issuer]) -> tuple[dict[str, Any], Issuer]:
    """The claims of ``token`` and the trusted issuer whose key signed it; nothing else checked yet."""
    if len(token) > _MAX_TOKEN_CHARS:
        raise TokenError(f"the bearer token is longer than {_MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("the bearer token is not a compact JWS")
    try:
        header = orjson.loads(_b64url(parts[0]))
        claims = orjson.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, orjson.JSONDecodeError):
        raise TokenError("the bearer token is not valid base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("the bearer token's header and claims must be JSON objects")
    if "crit" in header:
        # RFC 7515 §4.1.11: a recipient that does not understand every extension listed in "crit" must
        # reject the JWS; this server implements none.
        raise TokenError("the token's header lists critical extensions (crit) this server does not understand")
    alg = header.get("alg")
    if alg not in ALGS:
        raise TokenError(f"alg {alg!r} is not accepted (one of {', '.join(ALGS)})")
    issuer = by_iss.get(str(claims.get("iss")))
    if issuer is None:
        raise TokenError(f"issuer {claims.get('iss')!r} is not trusted")
    kid = header.get("kid")
    candidates = [k for key_id, k in issuer.keys if (kid is None or key_id in (None, kid)) and _fits(k, alg)]
    if not signature or not any(_verify_signature(key, alg, token) for key in candidates):
        raise TokenError("the token's signature does not verify with the issuer's keys")
    return claims, issuer


def check_claims(claims: dict[str, Any], issuer: Issuer, now: float | None = None) -> None:
    """TokenError unless the signed ``claims`` hold at ``now``: times (RFC 7519 §4.1.4-5), lifetime,
    audience (§4.1.3), institution and scope."""
    check_time(claims, valid_window(claims, issuer), time.time() if now is None else now)


def valid_window(claims: dict[str, Any], issuer: Issuer) -> tuple[float, float]:
    """When the signed ``claims`` hold, as (from, until) in seconds since the epoch, leeway included; TokenError
    for what no time can mend (no exp, a lifetime minted too long, audience, institution, scope). Everything but
    the clock is in the signed claims: a token seen again needs only :func:`check_time`."""
    exp, nbf, iat = (_numeric_date(claims, name) for name in ("exp", "nbf", "iat"))
    if exp is None:
        raise TokenError("the token has no exp")
    # A stolen bearer token is good until exp (RFC 6750 §5.2 recommends short lifetimes): a token that
    # lives longer than a working day is refused, however its issuer minted it; without iat, it is refused
    # while more than a day of it is left.
    if iat is not None and exp - iat > _MAX_LIFETIME:
        raise _too_long()
    if issuer.audience is not None:
        # RFC 7519 §4.1.3: aud is one string or an array of them.
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if issuer.audience not in audiences:
            raise TokenError("the token is not meant for this server (aud)")
    institution = claims.get("institution")
    if not isinstance(institution, str) or not institution:
        raise TokenError("the token names no institution")
    if issuer.institution != "*" and institution != issuer.institution:
        raise TokenError(f"issuer {issuer.issuer} may not vouch for institution {institution!r}")
    if not isinstance(claims.get("scope"), str):
        raise TokenError("the token carries no scope")
    starts = exp - _MAX_LIFETIME - (_LEEWAY if iat is not None else 0)
    if nbf is not None:
        starts = max(starts, nbf - _LEEWAY)
    return starts, exp + _LEEWAY


def check_time(claims: dict[str, Any], window: tuple[float, float], now: float) -> None:
    """TokenError unless ``now`` falls in the claims' :func:`valid_window`."""
    starts, ends = window
    if now > ends:
        raise TokenError("the token has expired")
    if now < starts:
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and now + _LEEWAY < nbf:
            raise TokenError("the token is not valid yet")
        raise _too_long()


def _too_long() -> TokenError:
    return TokenError(f"token lifetime too long (at most {_MAX_LIFETIME // 3600} h)")


def sign_eddsa(key: Ed25519PrivateKey, payload: dict[str, Any]) -> str:
    """A compact JWS (RFC 7515 §7.1) of ``payload``, signed with EdDSA (RFC 8037 §3.1)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="EdDSA is deprecated")
        token = jws.serialize_compact(
            {"alg": "EdDSA", "typ": "JWT"}, orjson.dumps(payload), OKPKey.import_key(key), ["EdDSA"]
        )
    return token
