"""Bearer JWTs, trusted issuers per institution, SMART v1/v2 scopes (auth ON; both backends)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.auth import LOCAL_ISSUER, Issuers, TokenError, mint_development_token, parse_scopes
from fhir_api.auth.issuers import local_key
from fhir_api.auth.tokens import sign_eddsa
from fhir_api.cli import main
from fhir_api.services import Services

FHIR = {"Content-Type": "application/fhir+json"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def auth_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={"auth": "required", "data_dir": tmp_path / "ehr-data", "auth_issuers_dir": tmp_path / "issuers"}
    )


@pytest.fixture
def issuers(auth_settings: Settings) -> dict[str, Any]:
    """Two institutional issuers: ISSSTE signs ES256 (a JWKS file), IMSS-Bienestar RS256 (a PEM key)."""
    directory = auth_settings.auth_issuers_dir
    assert directory is not None
    directory.mkdir(parents=True)
    es = ec.generate_private_key(ec.SECP256R1())
    numbers = es.public_key().public_numbers()
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "issste-1",
                      "x": _b64(numbers.x.to_bytes(32, "big")), "y": _b64(numbers.y.to_bytes(32, "big"))}]}  # fmt: skip
    (directory / "issste-jwks.json").write_bytes(orjson.dumps(jwks))
    (directory / "issste.json").write_bytes(
        orjson.dumps(
            {
                "issuer": "https://idp.issste.gob.mx",
                "institution": "ISSSTE",
                "jwks_file": "issste-jwks.json",
                "audience": "https://ehr.test/fhir",
            }
        )
    )
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rs.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (directory / "bienestar.json").write_bytes(
        orjson.dumps(
            {"issuer": "https://idp.imssbienestar.gob.mx", "institution": "IMSS-BIENESTAR", "keys": [pem.decode()]}
        )
    )
    return {"es": es, "rs": rs}


def _sign(alg: str, key: Any, claims: dict[str, Any], kid: str | None = None) -> str:
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    message = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}".encode()
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return f"{message.decode()}.{_b64(signature)}"


@pytest.fixture
def auth_client(auth_settings: Settings, issuers: dict[str, Any]) -> Iterator[TestClient]:
    services = Services.open(auth_settings)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client
    finally:
        services.close()


def _token(settings: Settings, scope: str, **claims: Any) -> dict[str, str]:
    values = {"institution": "IMSS", "unit": "DFIMS000011", "user": "dra.lopez", "role": "physician", "scope": scope}
    token = mint_development_token(settings, values | claims)
    return {"Authorization": f"Bearer {token}"}


def _patient(client: TestClient, headers: dict[str, str], family: str = "Lopez") -> str:
    response = client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}, headers=FHIR | headers
    )
    assert response.status_code == 201, response.text
    pid: str = response.json()["id"]
    return pid


def test_no_or_bad_token_is_401_with_an_operation_outcome(auth_client: TestClient, auth_settings: Settings) -> None:
    response = auth_client.get("/fhir/Patient")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["resourceType"] == "OperationOutcome"
    good = _token(auth_settings, "user/*.cruds")["Authorization"].split()[1]
    head, body, signature = good.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(body + "=="))
    forged = _b64(orjson.dumps(claims | {"institution": "ISSSTE"}))
    none_header = _b64(orjson.dumps({"alg": "none"}))
    expired = mint_development_token(auth_settings, claims | {"exp": int(time.time()) - 3600})
    for token in (
        "not-a-jwt",
        f"{head}.{forged}.{signature}",  # altered claims
        f"{none_header}.{body}.",  # alg none
        expired,
        _sign("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048), claims),  # unknown key
    ):
        response = auth_client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert response.json()["issue"][0]["code"] == "login"
    assert auth_client.get("/fhir/Patient", headers={"Authorization": f"Basic {good}"}).status_code == 401


def test_public_endpoints_answer_without_a_token(auth_client: TestClient) -> None:
    metadata = auth_client.get("/fhir/metadata")
    assert metadata.status_code == 200
    service = metadata.json()["rest"][0]["security"]["service"][0]["coding"][0]
    assert service["code"] == "SMART-on-FHIR"  # rest.security: how a client authenticates (SMART App Launch)
    smart = auth_client.get("/fhir/.well-known/smart-configuration")
    assert smart.status_code == 200
    config = smart.json()
    assert "permission-v2" in config["capabilities"] and "system/*.rs" in config["scopes_supported"]
    assert {i["institution"] for i in config["trusted_issuers"]} >= {"ISSSTE", "IMSS-BIENESTAR"}
    assert config["authentication"] == "required"


def test_the_callers_context_comes_from_the_token_not_from_headers(
    auth_client: TestClient, auth_settings: Settings
) -> None:
    spoof = {"X-EHR-Institution": "ISSSTE", "X-EHR-User": "mallory"}
    pid = _patient(auth_client, _token(auth_settings, "user/*.cruds") | spoof)
    services: Services = auth_client.app.state.services  # type: ignore[attr-defined]
    stream = services.application.stream("Patient", pid)
    assert stream is not None
    events = list(services.application.events.get(stream.id))
    assert events[0].context["institution"] == "IMSS" and events[0].context["user"] == "dra.lopez"
    assert events[0].context["unit"] == "DFIMS000011"


@pytest.mark.parametrize(
    ("scope", "allowed", "refused"),
    [
        ("user/*.cruds", ["read", "search", "create", "update", "delete"], []),
        ("user/Observation.rs", ["read-obs", "search-obs"], ["read", "create-obs", "search"]),
        ("user/Observation.cru", ["read-obs", "create-obs"], ["search-obs", "read"]),
        ("system/*.rs", ["read", "search", "history", "read-obs"], ["create", "update", "delete"]),
        ("user/*.read", ["read", "search", "read-obs"], ["create", "delete"]),
        ("user/*.write", ["create", "update"], ["read", "search"]),
        ("user/Observation.rs?category=vital-signs", [], ["read-obs", "search-obs"]),
        ("openid fhirUser", [], ["read", "search"]),
    ],
)
def test_scopes_decide_403(
    auth_client: TestClient, auth_settings: Settings, scope: str, allowed: list[str], refused: list[str]
) -> None:
    admin = _token(auth_settings, "user/*.cruds")
    pid = _patient(auth_client, admin)
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "peso"},
           "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    oid = auth_client.post("/fhir/Observation", json=obs, headers=FHIR | admin).json()["id"]
    headers = FHIR | _token(auth_settings, scope)
    requests = {
        "read": lambda: auth_client.get(f"/fhir/Patient/{pid}", headers=headers),
        "read-obs": lambda: auth_client.get(f"/fhir/Observation/{oid}", headers=headers),
        "search": lambda: auth_client.get("/fhir/Patient", headers=headers),
        "search-obs": lambda: auth_client.get("/fhir/Observation", headers=headers),
        "history": lambda: auth_client.get("/fhir/_history", headers=headers),
        "create": lambda: auth_client.post(
            "/fhir/Patient", json={"resourceType": "Patient", "active": True}, headers=headers
        ),
        "create-obs": lambda: auth_client.post("/fhir/Observation", json=obs, headers=headers),
        "update": lambda: auth_client.put(
            f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": False}, headers=headers
        ),
        "delete": lambda: auth_client.delete(f"/fhir/Observation/{oid}", headers=headers),
    }
    for name in allowed:
        assert requests[name]().status_code < 300, (scope, name)
    for name in refused:
        response = requests[name]()
        assert response.status_code == 403, (scope, name, response.status_code)
        assert response.json()["issue"][0]["code"] == "forbidden"


def test_patient_scopes_reach_only_the_launch_patients_compartment(
    auth_client: TestClient, auth_settings: Settings
) -> None:
    admin = _token(auth_settings, "user/*.cruds")
    mine, other = _patient(auth_client, admin, "Mia"), _patient(auth_client, admin, "Otra")
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "peso"},
           "subject": {"reference": f"Patient/{mine}"}}  # fmt: skip
    oid = auth_client.post("/fhir/Observation", json=obs, headers=FHIR | admin).json()["id"]
    headers = _token(auth_settings, "patient/*.rs", patient=mine)
    assert auth_client.get(f"/fhir/Patient/{mine}", headers=headers).status_code == 200
    assert auth_client.get(f"/fhir/Observation/{oid}", headers=headers).status_code == 200
    assert auth_client.get("/fhir/Observation", params={"patient": mine}, headers=headers).status_code == 200
    assert auth_client.get(f"/fhir/Patient/{other}", headers=headers).status_code == 403
    assert auth_client.get("/fhir/Observation", headers=headers).status_code == 403
    assert auth_client.get("/fhir/Observation", params={"patient": other}, headers=headers).status_code == 403
    assert auth_client.post("/fhir/Observation", json=obs, headers=FHIR | headers).status_code == 403
    no_context = _token(auth_settings, "patient/*.rs")
    assert auth_client.get(f"/fhir/Patient/{mine}", headers=no_context).status_code == 403


def test_institutional_issuers_vouch_only_for_their_institution(
    auth_client: TestClient, auth_settings: Settings, issuers: dict[str, Any]
) -> None:
    now = int(time.time())
    base = {"iat": now, "exp": now + 600, "scope": "user/*.rs", "user": "enf.ruiz", "unit": "DFSSA003241"}
    issste = {"iss": "https://idp.issste.gob.mx", "aud": "https://ehr.test/fhir", "institution": "ISSSTE"}
    ok = _sign("ES256", issuers["es"], base | issste, kid="issste-1")
    assert auth_client.get("/fhir/Patient", headers={"Authorization": f"Bearer {ok}"}).status_code == 200
    as_imss = _sign("ES256", issuers["es"], base | issste | {"institution": "IMSS"}, kid="issste-1")
    assert auth_client.get("/fhir/Patient", headers={"Authorization": f"Bearer {as_imss}"}).status_code == 401
    wrong_aud = _sign("ES256", issuers["es"], base | issste | {"aud": "https://other"}, kid="issste-1")
    assert auth_client.get("/fhir/Patient", headers={"Authorization": f"Bearer {wrong_aud}"}).status_code == 401
    bienestar = {"iss": "https://idp.imssbienestar.gob.mx", "institution": "IMSS-BIENESTAR"}
    rs = _sign("RS256", issuers["rs"], base | bienestar)
    assert auth_client.get("/fhir/Patient", headers={"Authorization": f"Bearer {rs}"}).status_code == 200
    # A key of one issuer does not sign for another.
    crossed = _sign("RS256", issuers["rs"], base | issste)
    assert auth_client.get("/fhir/Patient", headers={"Authorization": f"Bearer {crossed}"}).status_code == 401


def test_production_trusts_no_local_issuer_and_refuses_disabled_auth(auth_settings: Settings, tmp_path: Path) -> None:
    production = auth_settings.model_copy(update={"env": "production"})
    assert LOCAL_ISSUER not in Issuers.configured(production).by_iss
    with pytest.raises(RuntimeError):
        mint_development_token(production, {"institution": "IMSS", "scope": "user/*.rs"})
    disabled = production.model_copy(update={"auth": "disabled-for-development"})
    from fhir_api.auth import AuthMiddleware

    with pytest.raises(RuntimeError, match="production"):
        AuthMiddleware(create_app(settings=disabled), disabled)


def test_disabled_auth_is_announced_in_every_response(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    response = client.get("/fhir/metadata")
    assert response.headers["x-ehr-auth"] == "disabled-for-development"
    assert client.get("/fhir/Patient").headers["x-ehr-auth"] == "disabled-for-development"


def test_ehr_token_mints_a_verifiable_development_token(
    sqlite_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(sqlite_settings.data_dir)
    argv = ["token", "--institution", "IMSS", "--unit", "DFIMS000011", "--user", "dr.x", "--scope", "user/*.rs"]
    assert main([*argv, "--data", data]) == 0
    token = capsys.readouterr().out.strip()
    claims = Issuers.configured(sqlite_settings).verify(token)
    assert claims["institution"] == "IMSS" and claims["scope"] == "user/*.rs" and claims["iss"] == LOCAL_ISSUER


def test_a_token_accepted_once_is_still_checked_on_every_request(sqlite_settings: Settings) -> None:
    """The signature is checked once per token; exp, nbf and the rest on every request (RFC 7519 §4.1.4)."""
    issuers = Issuers.configured(sqlite_settings)
    now = int(time.time())
    claims = {"institution": "IMSS", "scope": "user/*.rs", "iat": now, "nbf": now + 300, "exp": now + 1200}
    token = mint_development_token(sqlite_settings, claims)
    with pytest.raises(TokenError, match="not valid yet"):
        issuers.verify(token)
    assert issuers.verify(token, now=now + 400)["institution"] == "IMSS"
    issuers.verify(token, now=now + 400)["institution"] = "changed by a caller"
    assert issuers.verify(token, now=now + 400)["institution"] == "IMSS"
    with pytest.raises(TokenError, match="expired"):
        issuers.verify(token, now=now + 3600)
    header, payload, signature = token.split(".")
    forged = _b64(orjson.dumps(json.loads(base64.urlsafe_b64decode(payload + "==")) | {"institution": "ISSSTE"}))
    with pytest.raises(TokenError, match="signature"):
        issuers.verify(f"{header}.{forged}.{signature}", now=now + 400)


def test_a_tokens_lifetime_bound_holds_on_every_request_as_on_the_first(sqlite_settings: Settings) -> None:
    """At most a day of life (RFC 6750 §5.2's short lifetimes): a token minted for longer is refused on every
    request; one without ``iat`` is refused while more than a day of it is left, and accepted once less is."""
    issuers = Issuers.configured(sqlite_settings)
    now = int(time.time())
    day = 24 * 3600
    base = {"institution": "IMSS", "scope": "user/*.rs"}
    minted_long = mint_development_token(sqlite_settings, base | {"iat": now, "exp": now + day + 3600})
    for moment in (now, now + 7200, now + day):
        with pytest.raises(TokenError, match="lifetime too long"):
            issuers.verify(minted_long, now=moment)
    # Signed by the development issuer as mint_development_token does, without the iat it always adds
    token = sign_eddsa(local_key(sqlite_settings), {"iss": LOCAL_ISSUER, "exp": now + day + 3600, **base})
    with pytest.raises(TokenError, match="lifetime too long"):
        issuers.verify(token, now=now)
    assert issuers.verify(token, now=now + 3600 + 1)["institution"] == "IMSS"
    with pytest.raises(TokenError, match="lifetime too long"):
        issuers.verify(token, now=now + 3600 - 1)  # seen before, and the clock is checked again
    with pytest.raises(TokenError, match="expired"):
        issuers.verify(token, now=now + day + 3600 + 61)


def test_the_server_verifies_a_tokens_signature_once_however_many_requests_carry_it(
    auth_client: TestClient, auth_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sends the same bearer token until it expires: its signature (an Ed25519 or ECDSA check, the
    costliest part of a read's authentication) is verified on the first request, remembered with its claims,
    and the claims are checked again on every later one, an expired token refused as ever."""
    import fhir_api.auth.tokens as tokens

    checked: list[str] = []
    verify_signature = tokens._verify_signature

    def counted(key: Any, alg: str, token: str) -> bool:
        checked.append(token)
        return verify_signature(key, alg, token)

    monkeypatch.setattr(tokens, "_verify_signature", counted)
    headers = _token(auth_settings, "user/*.cruds")
    token = headers["Authorization"].split()[1]
    pid = _patient(auth_client, headers)
    for _ in range(3):
        assert auth_client.get(f"/fhir/Patient/{pid}", headers=headers).status_code == 200
    assert checked.count(token) == 1
    expired = mint_development_token(
        auth_settings,
        {
            "institution": "IMSS",
            "scope": "user/*.cruds",
            "iat": int(time.time()) - 7200,
            "exp": int(time.time()) - 3600,
        },
    )
    for _ in range(2):
        response = auth_client.get(f"/fhir/Patient/{pid}", headers={"Authorization": f"Bearer {expired}"})
        assert response.status_code == 401 and "expired" in response.text


def test_scope_parsing_v1_and_v2() -> None:
    grants = {(g.context, g.resource_type, "".join(sorted(g.permissions))) for g in parse_scopes(
        "system/*.rs user/Observation.cru patient/*.r user/*.read user/Patient.write launch openid x/y.z"
    )}  # fmt: skip
    assert grants == {
        ("system", "*", "rs"),
        ("user", "Observation", "cru"),
        ("patient", "*", "r"),
        ("user", "*", "rs"),
        ("user", "Patient", "cdu"),
    }
    assert json.dumps(sorted(grants))


def test_interactions_map_to_the_permissions_they_need() -> None:
    from fhir_api.auth import need_of

    cases = {
        ("GET", "/fhir/Patient/1"): ("Patient", "r"),
        ("GET", "/fhir/Patient/1/_history/2"): ("Patient", "r"),
        ("GET", "/fhir/Patient/1/_history"): ("Patient", "r"),
        ("GET", "/fhir/Patient"): ("Patient", "s"),
        ("POST", "/fhir/Patient/_search"): ("Patient", "s"),
        ("GET", "/fhir/Patient/_history"): ("Patient", "s"),
        ("GET", "/fhir/_history"): ("*", "s"),
        ("POST", "/fhir/Observation"): ("Observation", "c"),
        ("PUT", "/fhir/Observation/1"): ("Observation", "u"),
        ("PATCH", "/fhir/Observation/1"): ("Observation", "u"),
        ("DELETE", "/fhir/Observation/1"): ("Observation", "d"),
        # A Bundle asks nothing at the door: each entry is checked as the same request on its own.
        ("POST", "/fhir"): ("*", ""),
        ("GET", "/fhir/Patient/1/$everything"): ("*", "rs"),
        ("GET", "/fhir/$export"): ("*", "s"),
        ("GET", "/fhir/Patient/$export"): ("*", "s"),
        ("GET", "/fhir/Group/g/$export"): ("*", "s"),
        ("POST", "/fhir/Patient/$match"): ("Patient", "s"),
        # $import writes any type as update-as-create; its status and cancellation need what it needed.
        ("POST", "/fhir/$import"): ("*", "cu"),
        ("GET", "/fhir/$import-status/j"): ("*", "cu"),
        ("DELETE", "/fhir/$import-status/j"): ("*", "cu"),
    }
    for (method, path), (resource_type, permissions) in cases.items():
        need = need_of(method, path)
        assert (need.resource_type, need.permissions) == (resource_type, permissions), (method, path)


def test_bundle_entries_and_conditional_writes_need_what_the_request_alone_would() -> None:
    from fhir_api.auth import entry_need

    cases = {
        ("POST", "Observation", None): ("Observation", "c"),
        ("POST", "Patient", "identifier=sys|1"): ("Patient", "cs"),
        ("PUT", "Observation/1", None): ("Observation", "u"),
        ("PUT", "Patient?identifier=sys|1", None): ("Patient", "us"),
        ("PATCH", "Observation/1", None): ("Observation", "u"),
        ("DELETE", "Observation/1", None): ("Observation", "d"),
        ("DELETE", "Patient?identifier=sys|1", None): ("Patient", "ds"),
        ("GET", "Patient/1", None): ("Patient", "r"),
    }
    for (method, url, if_none_exist), expected in cases.items():
        need = entry_need(method, url, if_none_exist)
        assert (need.resource_type, need.permissions) == expected, (method, url)
        assert need.write == (method != "GET")


def _signed_locally(settings: Settings, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token signed by the development issuer's key with any header and claims (what its holder could mint)."""
    from fhir_api.auth import _local_key

    message = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    return f"{message}.{_b64(_local_key(settings).sign(message.encode()))}"


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {"iss": LOCAL_ISSUER, "iat": now, "nbf": now, "exp": now + 600}
    return values | {"institution": "IMSS", "user": "dra.lopez", "scope": "user/*.rs"} | extra


def _refused(client: TestClient, token: str) -> str:
    response = client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert response.json()["issue"][0]["code"] == "login"
    return str(response.json()["issue"][0].get("diagnostics", ""))


def test_token_with_crit_header_is_401(auth_client: TestClient, auth_settings: Settings) -> None:
    plain = _signed_locally(auth_settings, {"alg": "EdDSA", "typ": "JWT"}, _claims())
    assert auth_client.get("/fhir/Patient", headers={"Authorization": f"Bearer {plain}"}).status_code == 200
    crit = {"alg": "EdDSA", "typ": "JWT", "crit": ["exp-extension"], "exp-extension": True}
    _refused(auth_client, _signed_locally(auth_settings, crit, _claims()))


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["9999999999", True, [1], {"n": 1}])
def test_token_with_non_numeric_dates_is_401(
    auth_client: TestClient, auth_settings: Settings, claim: str, value: Any
) -> None:
    _refused(auth_client, _signed_locally(auth_settings, {"alg": "EdDSA"}, _claims(**{claim: value})))


def test_oversized_token_is_401(auth_client: TestClient, auth_settings: Settings) -> None:
    _refused(auth_client, _signed_locally(auth_settings, {"alg": "EdDSA"}, _claims(padding="x" * 9000)))


def test_token_lifetime_over_a_day_is_401(auth_client: TestClient, auth_settings: Settings) -> None:
    now = int(time.time())
    for claims in (_claims(exp=now + 3 * 86400), _claims(iat=now - 86400, exp=now + 3600)):
        assert "lifetime too long" in _refused(auth_client, _signed_locally(auth_settings, {"alg": "EdDSA"}, claims))
    week = mint_development_token(auth_settings, {"institution": "IMSS", "scope": "user/*.rs"}, minutes=7 * 24 * 60)
    _refused(auth_client, week)


def test_ledger_proof_of_foreign_resource_is_403(auth_client: TestClient, auth_settings: Settings) -> None:
    """A proof tells whether a resource exists and how many versions it has: only for whoever may read it."""
    imss = _token(auth_settings, "user/*.cruds")
    issste = _token(auth_settings, "user/*.cruds", institution="ISSSTE", user="dr.ruiz")
    pid = _patient(auth_client, imss)
    url = f"/fhir/$ledger-proof?resource=Patient/{pid}&version=1"
    assert auth_client.get(url, headers=imss).status_code == 200
    assert auth_client.get(f"/fhir/Patient/{pid}", headers=issste).status_code == 403
    denied = auth_client.get(url, headers=issste)
    assert denied.status_code == 403, denied.text
    assert pid not in denied.text.replace(f"Patient/{pid}", "")  # no event bytes, no stream id
    event = auth_client.get(url, headers=imss).json()["event"]["notification_id"]
    assert auth_client.get(f"/fhir/$ledger-proof?event={event}", headers=issste).status_code == 403
    unknown = auth_client.get("/fhir/$ledger-proof?resource=Patient/nobody&version=1", headers=issste)
    assert unknown.status_code == 404
