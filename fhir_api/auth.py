"""Bearer JWTs from trusted issuers, SMART v1/v2 scopes, the caller's context from the token.

**Issuers.** Each trusted issuer is one JSON file in the issuers directory (``EHR_AUTH_ISSUERS_DIR``,
default ``<data dir>/issuers``)::

    {"issuer": "https://idp.imss.gob.mx", "institution": "IMSS", "audience": "https://ehr.example/fhir",
     "keys": ["-----BEGIN PUBLIC KEY-----..."], "jwks": {"keys": [...]}, "jwks_file": "imss-jwks.json"}

An issuer only vouches for its own institution: a token whose ``institution`` claim differs is refused.
Outside production the local development issuer of ``ehr token`` (key ``<data dir>/token-issuer.pem``) is
trusted too, for any institution.

**Tokens.** Compact JWS, ``alg`` one of ``EdDSA``, ``ES256``, ``RS256`` (never ``none`` or HMAC). Required
claims: ``iss``, ``exp``, ``institution``, ``scope``; ``sub``/``user``, ``unit`` (CLUES), ``role``,
``purpose`` (HL7 PurposeOfUse, default TREAT), ``patient`` (launch context for ``patient/`` scopes), ``aud``
(checked when the issuer names one), ``nbf``/``iat``.

**Scopes.** SMART v2 ``{patient|user|system}/{Type|*}.{c?r?u?d?s?}`` and v1 ``.read``/``.write``/``.*``.
Scopes with v2 query qualifiers (``?category=...``) grant nothing (not enforceable here, so not trusted).
``patient/`` scopes reach only the compartment of the token's ``patient`` claim: read/vread/history of a
resource in it, searches naming it (``patient=``/``subject=``/``_id``), its ``$everything``/``$summary``;
writes under patient scopes alone are refused.

**Off switch.** ``EHR_AUTH=disabled-for-development`` (refused with ``EHR_ENV=production``): no token is
asked for, the ``X-EHR-*`` headers name the caller, and every response carries ``X-EHR-Auth:
disabled-for-development``.
"""

from __future__ import annotations

import base64
import math
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ehr_core.application import PATIENT_WRITABLE, UNKNOWN_INSTITUTION
from ehr_core.context import WriteContext
from ehr_core.errors import Issue
from ehr_core.settings import Settings
from fhir_api.access import Decision, decide, record_break_glass
from fhir_api.errors import outcome_response
from projections.access import Viewer
from projections.resources import ResourceViews

__all__ = [
    "LOCAL_ISSUER",
    "AuthMiddleware",
    "Caller",
    "Issuers",
    "TokenError",
    "covered",
    "mint_development_token",
    "parse_scopes",
    "smart_configuration",
]

LOCAL_ISSUER = "urn:ehr-core:local-development-issuer"
DISABLED = "disabled-for-development"
_ALGS = ("EdDSA", "ES256", "RS256")
_LEEWAY = 60
#: Bearer tokens longer than this are refused unread (a few claims and a signature fit in far less).
_MAX_TOKEN_CHARS = 8192
#: The longest a token may live, in seconds (exp - iat, and exp - now).
_MAX_LIFETIME = 24 * 3600


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


_V2 = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)$")
_PUBLIC = ("/fhir/metadata", "/fhir/.well-known/smart-configuration")


class TokenError(Exception):
    """Why a token is not accepted (said in the 401's OperationOutcome)."""


# -- scopes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    context: str  # patient, user, system
    resource_type: str  # a type or *
    permissions: frozenset[str]  # c r u d s


def parse_scopes(scope: str) -> list[Grant]:
    grants = []
    for item in scope.split():
        match = _V2.match(item)
        if match is None:
            continue  # openid, fhirUser, launch/patient, qualified v2 scopes...: no resource access
        context, resource_type, perms = match.groups()
        if perms == "read":
            permissions = frozenset("rs")
        elif perms == "write":
            permissions = frozenset("cud")
        elif perms == "*":
            permissions = frozenset("cruds")
        elif re.fullmatch(r"c?r?u?d?s?", perms):
            permissions = frozenset(perms)
        else:
            continue
        grants.append(Grant(context, resource_type, permissions))
    return grants


# -- keys and issuers --------------------------------------------------------------------------------


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk_key(jwk: dict[str, Any]) -> Any:
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


def _verify_signature(key: Any, alg: str, signature: bytes, message: bytes) -> None:
    if alg == "EdDSA":
        key.verify(signature, message)
    elif alg == "ES256":
        if len(signature) != 64:
            raise InvalidSignature()
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    else:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


@dataclass
class Issuer:
    issuer: str
    institution: str  # "*" for the local development issuer
    keys: list[tuple[str | None, Any]] = field(default_factory=list)  # (kid, public key)
    audience: str | None = None
    token_endpoint: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> Issuer:
        data = orjson.loads(path.read_bytes())
        issuer = cls(str(data["issuer"]), str(data["institution"]), [], data.get("audience"))
        issuer.token_endpoint = data.get("token_endpoint")
        for pem in data.get("keys", []):
            issuer.keys.append((None, serialization.load_pem_public_key(pem.encode())))
        jwks = data.get("jwks")
        if data.get("jwks_file"):
            jwks = orjson.loads((path.parent / data["jwks_file"]).read_bytes())
        for jwk in (jwks or {}).get("keys", []):
            issuer.keys.append((jwk.get("kid"), _jwk_key(jwk)))
        if not issuer.keys:
            raise ValueError(f"{path}: issuer {issuer.issuer} has no keys")
        return issuer


def _local_key(settings: Settings) -> Ed25519PrivateKey:
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

    @classmethod
    def configured(cls, settings: Settings) -> Issuers:
        directory = settings.auth_issuers_dir or settings.data_dir / "issuers"
        files = sorted(directory.glob("*.json")) if directory.is_dir() else []
        # JWKS files may sit beside the issuer files: an issuer file is the one naming an "issuer".
        issuers = [Issuer.from_file(p) for p in files if b'"issuer"' in p.read_bytes()]
        if not settings.production:
            local = _local_key(settings).public_key()
            issuers.append(Issuer(LOCAL_ISSUER, "*", [(None, local)]))
        return cls(issuers)

    def verify(self, token: str, now: float | None = None) -> dict[str, Any]:
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
        if alg not in _ALGS:
            raise TokenError(f"alg {alg!r} is not accepted (one of {', '.join(_ALGS)})")
        issuer = self.by_iss.get(str(claims.get("iss")))
        if issuer is None:
            raise TokenError(f"issuer {claims.get('iss')!r} is not trusted")
        kid = header.get("kid")
        candidates = [k for key_id, k in issuer.keys if (kid is None or key_id in (None, kid)) and _fits(k, alg)]
        message = f"{parts[0]}.{parts[1]}".encode()
        for key in candidates:
            try:
                _verify_signature(key, alg, signature, message)
                break
            except InvalidSignature:
                continue
        else:
            raise TokenError("the token's signature does not verify with the issuer's keys")
        now = time.time() if now is None else now
        exp, nbf, iat = (_numeric_date(claims, name) for name in ("exp", "nbf", "iat"))
        if exp is None:
            raise TokenError("the token has no exp")
        if now > exp + _LEEWAY:
            raise TokenError("the token has expired")
        if nbf is not None and now + _LEEWAY < nbf:
            raise TokenError("the token is not valid yet")
        # A stolen bearer token is good until exp (RFC 6750 §5.2 recommends short lifetimes): a token that
        # lives longer than a working day is refused, however its issuer minted it.
        if exp - (iat if iat is not None else now) > _MAX_LIFETIME or exp - now > _MAX_LIFETIME + _LEEWAY:
            raise TokenError(f"token lifetime too long (at most {_MAX_LIFETIME // 3600} h)")
        if issuer.audience is not None:
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
        return claims


# -- the caller ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    claims: dict[str, Any]
    grants: list[Grant]

    def context(self, request: Request, interaction: str) -> WriteContext:
        c = self.claims
        request_id = request.headers.get("x-request-id")
        values: dict[str, Any] = {
            "institution": str(c["institution"]),
            "unit": c.get("unit"),
            "user": str(c.get("user") or c.get("sub") or "anonymous"),
            "role": c.get("role"),
            "purpose": str(c.get("purpose") or "TREAT"),
            "address": request.client.host if request.client else None,
            "interaction": interaction,
        }
        patient = c.get("patient")
        if isinstance(patient, str) and patient and not any(g.context in ("user", "system") for g in self.grants):
            values["patient"] = patient  # a patient-facing app: it writes as the patient, not as staff
        if request_id:
            values["request_id"] = request_id[:128]
        if getattr(request.state, "ehr_break_glass", False):
            # The access was granted by breaking the glass; the audit entry says so (HL7 v3 BTG).
            values["purpose"] = "BTG"
        return WriteContext(**values)

    def viewer(self, break_glass: bool = False, now: datetime | None = None) -> Viewer:
        """What the access policy needs to filter searches, history and exports for this caller."""

        def reach(contexts: tuple[str, ...]) -> frozenset[str] | None:
            types = {g.resource_type for g in self.grants if g.context in contexts and g.permissions & {"r", "s"}}
            return None if "*" in types else frozenset(types)

        patient = self.claims.get("patient")
        return Viewer(
            institution=str(self.claims["institution"]),
            now=(now or datetime.now(UTC)).isoformat(),
            types=reach(("user", "system")),
            patient=patient if isinstance(patient, str) and patient else None,
            patient_types=reach(("patient",)),
            break_glass=break_glass,
        )


@dataclass(frozen=True)
class Need:
    """What a request needs: permissions on a type, and what a patient-context scope must check."""

    resource_type: str
    permissions: str
    #: (type, id) of a single resource read; None otherwise.
    target: tuple[str, str] | None = None
    write: bool = False
    #: $everything / $summary of this Patient id.
    patient_operation: str | None = None
    #: A compartment search in this Patient's compartment (filtered like a type search, not all or nothing).
    compartment: str | None = None


def need_of(method: str, path: str, query: str = "") -> Need:
    """What ``method path`` needs. Conditional writes (a search in the URL) need ``s`` as well: SMART v2
    scopes (App Launch 2.0 §Scopes): the server searches on the caller's behalf to find the target."""
    parts = [p for p in path[len("/fhir") :].split("/") if p]
    operation = next((p for p in parts if p.startswith("$")), None)
    if not parts:
        # A Bundle: each entry is checked on its own (fhir_api.interactions.transaction), like a request.
        return Need("*", "", write=True) if method == "POST" else Need("*", "s")
    if operation is not None:
        if parts[0] == "Patient" and len(parts) == 3 and operation in ("$everything", "$summary", "$person"):
            return Need("*", "rs", patient_operation=parts[1])
        if operation in ("$link", "$unlink"):
            return Need(parts[0], "u", write=True)
        if operation in ("$match", "$ihe-pix", "$review"):
            return Need(parts[0], "s")
        # $export (system, Patient, Group), $export-status/file, $ledger-*: bulk reads over every type
        if operation.startswith("$export") or parts[0].startswith("$"):
            return Need("*", "s")
        return Need(parts[0], "s")
    resource_type = parts[0]
    if resource_type in ("_history", "_search"):  # system history, system search by POST
        return Need("*", "s")
    if len(parts) >= 3 and parts[2] not in ("_history",) and parts[0] == "Patient":
        # Compartment search, GET Patient/[id]/[type] or POST .../[type]/_search (R4 §3.1.1.1).
        return Need(parts[2], "s", compartment=parts[1])
    if len(parts) == 1:
        if method == "GET":
            return Need(resource_type, "s")
        permission = {"POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method, "c")
        if method != "POST" and query:
            permission += "s"
        return Need(resource_type, permission, write=True)
    if parts[1] in ("_history", "_search"):
        return Need(resource_type, "s")
    if method == "GET":
        return Need(resource_type, "r", target=(resource_type, parts[1]))
    permission = {"PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method, "u")
    return Need(resource_type, permission, write=True)


def entry_need(method: str, url: str, if_none_exist: str | None = None) -> Need:
    """What one Bundle entry needs, as the same request sent on its own would (R4 §3.1.0.11: each entry
    is processed as if it were an individual interaction)."""
    path, _, query = url.partition("?")
    need = need_of(method, "/fhir/" + path.strip("/"), query)
    if method == "POST" and if_none_exist:
        need = Need(need.resource_type, need.permissions + "s", need.target, need.write, need.patient_operation)
    return need


def scope_refusal(services: Any, caller: Caller, need: Need, query: dict[str, list[str]]) -> str | None:
    """Why the caller's scopes do not allow ``need`` (None: they do). ``user``/``system`` scopes reach every
    patient; ``patient`` scopes only reads inside the token patient's compartment (SMART App Launch:
    the patient context), and of writes only the patient's own Consent."""
    wide = [g for g in caller.grants if g.context in ("user", "system")]
    if covered(wide, need):
        return None
    narrow = [g for g in caller.grants if g.context == "patient"]
    patient = caller.claims.get("patient")
    if not (covered(narrow, need) and isinstance(patient, str) and patient):
        return f"no scope grants this interaction ({need.resource_type} needs '{need.permissions}')"
    if not _in_compartment(services, patient, need, query):
        return f"patient-level scopes reach only Patient/{patient}'s compartment (reads and searches naming it)"
    return None


def covered(grants: Iterable[Grant], need: Need) -> bool:
    """Whether some scope grants every permission ``need`` asks for on its type."""
    for permission in need.permissions:
        if not any(g.resource_type in ("*", need.resource_type) and permission in g.permissions for g in grants):
            return False
    return True


def _in_compartment(services: Any, patient: str, need: Need, query: dict[str, list[str]]) -> bool:
    """Whether a patient-context request stays inside the token's patient compartment. Of writes, only a
    plain create or update of a type the patient decides (their Consent) passes here; the domain then
    checks that it is the token patient's own (``RecordApplication.authorize_patient``)."""
    if need.write:
        return need.resource_type in PATIENT_WRITABLE and "s" not in need.permissions and "d" not in need.permissions
    if need.patient_operation is not None:
        return need.patient_operation == patient
    if need.compartment is not None:
        return need.compartment == patient
    refs = {patient, f"Patient/{patient}"}
    if need.target is not None:
        resource_type, resource_id = need.target
        if resource_type == "Patient":
            return resource_id == patient
        with services.views.read() as tx:
            return ResourceViews.in_compartment(tx, patient, resource_type, resource_id)
    if need.resource_type == "Patient":
        return query.get("_id", [""]) == [patient]
    values = query.get("patient", []) + query.get("subject", [])
    return bool(values) and all(v in refs for v in values)


def _query(scope: Scope) -> dict[str, list[str]]:
    from urllib.parse import parse_qs

    return parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)


class AuthMiddleware:
    """401 without a valid bearer token, 403 when no scope covers the interaction; claims → request.state."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.disabled = settings.auth_disabled
        if self.disabled and settings.production:
            raise RuntimeError("EHR_AUTH=disabled-for-development is refused with EHR_ENV=production")
        if not self.disabled and settings.auth not in ("required", ""):
            raise RuntimeError(f"EHR_AUTH={settings.auth!r}: use 'required' or '{DISABLED}'")
        self.issuers: Issuers | None = None if self.disabled else Issuers.configured(settings)
        if self.disabled:
            print(
                "ehr: WARNING — AUTHENTICATION IS DISABLED (EHR_AUTH=disabled-for-development): every caller is "
                "trusted, X-EHR-* headers name them. Never with real data.",
                file=sys.stderr,
                flush=True,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.disabled:

            async def announce(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (b"x-ehr-auth", DISABLED.encode())]
                await send(message)

            await self.app(scope, receive, announce)
            return
        path = str(scope.get("path", ""))
        if not path.startswith("/fhir") or path in _PUBLIC:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self._refuse(scope, receive, send, 401, "login", "a bearer token is required (Authorization: Bearer)")
            return
        assert self.issuers is not None
        try:
            claims = self.issuers.verify(token.strip())
        except TokenError as error:
            await self._refuse(scope, receive, send, 401, "login", f"invalid bearer token: {error}")
            return
        if str(claims.get("institution")) == UNKNOWN_INSTITUTION:
            # The name the domain gives a writer without an institution, never held to the write policy.
            await self._refuse(scope, receive, send, 401, "login", "the token names no institution")
            return
        caller = Caller(claims, parse_scopes(str(claims["scope"])))
        scope.setdefault("state", {})["ehr_caller"] = caller
        query_string = scope.get("query_string", b"").decode()
        need = need_of(str(scope["method"]), path, query_string)
        wide = [g for g in caller.grants if g.context in ("user", "system")]
        refusal = None
        if not covered(wide, need):  # only patient scopes may still cover it: that asks the views
            refusal = await _run_sync(scope_refusal, request.app.state.services, caller, need, _query(scope))
        if refusal is not None:
            await self._refuse(scope, receive, send, 403, "forbidden", refusal)
            return
        if not need.write and (need.target is not None or need.patient_operation is not None):
            reason = request.headers.get("x-ehr-break-glass", "").strip() or None
            decision = await _run_sync(_policy, request, caller, need, reason)
            if not decision.permitted:
                what = f"{need.target[0]}/{need.target[1]}" if need.target else f"Patient/{need.patient_operation}"
                message = (
                    f"{what} holds records of {', '.join(decision.owners)}; {claims['institution']} may read them only "
                    "with the patient's active Consent or break-the-glass (X-EHR-Break-Glass: reason)"
                )
                await self._refuse(scope, receive, send, 403, "forbidden", message)
                return
            if decision.basis == "break-the-glass":
                scope["state"]["ehr_break_glass"] = True

                async def flagged(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        message["headers"] = [*message.get("headers", []), (b"x-ehr-break-glass", b"granted")]
                    await send(message)

                await self.app(scope, receive, flagged)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="ehr-core"'} if status == 401 else None
        response = outcome_response(status, [Issue(code, message)], headers)
        await response(scope, receive, send)


async def _run_sync(function: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args)


def _policy(request: Request, caller: Caller, need: Need, reason: str | None) -> Decision:
    """The access policy (fhir_api/access.py): own records, consent, or break-the-glass (logged)."""
    services = request.app.state.services
    institution = str(caller.claims["institution"])
    patient = need.patient_operation if need.target is None else None
    if patient is not None:
        services.identity_current()  # the unified record's links, as $everything will read them
    with services.views.read() as tx:
        decision = decide(tx, institution, target=need.target, patient=patient, break_glass=reason)
    if decision.basis == "break-the-glass" and reason is not None:
        what = f"{need.target[0]}/{need.target[1]}" if need.target else f"Patient/{patient}/$everything"
        with services.views.write() as tx:
            record_break_glass(tx, caller.claims, reason, what)
    return decision


def caller_of(request: Request) -> Caller | None:
    caller: Caller | None = getattr(request.state, "ehr_caller", None)
    return caller


def viewer_of(request: Request) -> Viewer | None:
    """The caller as the access policy filters reads (None with authentication disabled: no filter)."""
    caller = caller_of(request)
    if caller is None:
        return None
    return caller.viewer(break_glass=bool(getattr(request.state, "ehr_break_glass", False)))


# -- development tokens ------------------------------------------------------------------------------


def mint_development_token(settings: Settings, claims: dict[str, Any], minutes: int = 60) -> str:
    """A token from the local development issuer (refused in production)."""
    if settings.production:
        raise RuntimeError("the local development issuer does not exist with EHR_ENV=production")
    key = _local_key(settings)
    now = int(time.time())
    payload = {"iss": LOCAL_ISSUER, "iat": now, "nbf": now, "exp": now + minutes * 60, **claims}
    header = _b64url_encode(orjson.dumps({"alg": "EdDSA", "typ": "JWT"}))
    body = _b64url_encode(orjson.dumps(payload))
    signature = key.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64url_encode(signature)}"


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """``/.well-known/smart-configuration``: this server is a resource server; tokens come from issuers."""
    issuers = [] if settings.auth_disabled else list(Issuers.configured(settings).by_iss.values())
    endpoints = [i.token_endpoint for i in issuers if i.token_endpoint]
    config: dict[str, Any] = {
        "issuer": issuers[0].issuer if len(issuers) == 1 else None,
        "grant_types_supported": ["client_credentials", "authorization_code"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "scopes_supported": [
            "system/*.rs",
            "system/*.cruds",
            "user/*.cruds",
            "user/*.rs",
            "patient/*.rs",
            "user/*.read",
            "user/*.write",
            "patient/*.read",
            "openid",
            "fhirUser",
            "launch/patient",
        ],
        "capabilities": [
            "permission-v1",
            "permission-v2",
            "permission-user",
            "permission-patient",
            "client-confidential-asymmetric",
        ],
        "code_challenge_methods_supported": ["S256"],
        "trusted_issuers": [{"issuer": i.issuer, "institution": i.institution} for i in issuers],
        "authentication": "disabled-for-development" if settings.auth_disabled else "required",
    }
    if endpoints:
        config["token_endpoint"] = endpoints[0]
    return {k: v for k, v in config.items() if v is not None}
