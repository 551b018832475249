"""The authorization server's signing keys: the newest signs, older ones keep verifying after a rotation."""

from __future__ import annotations

import time
from pathlib import Path

from ehr_core.settings import Settings
from fhir_api.auth.signing import SigningKeys
from fhir_api.auth.tokens import Issuer, verify_token


def _claims() -> dict[str, object]:
    now = int(time.time())
    return {"iss": "https://ehr.test/oauth", "exp": now + 300, "iat": now, "institution": "IMSS", "scope": "user/*.rs"}


def test_a_token_signed_before_a_rotation_still_verifies(tmp_path: Path) -> None:
    keys = SigningKeys(Settings(data_dir=tmp_path))
    before = keys.sign(_claims())
    old_kid = keys.jwks()["keys"][0]["kid"]
    new_kid = keys.rotate()
    assert new_kid != old_kid
    assert {k["kid"] for k in keys.jwks()["keys"]} == {old_kid, new_kid}
    after = keys.sign(_claims())
    # Another process (a server) reads the same directory.
    reader = SigningKeys(Settings(data_dir=tmp_path))
    issuer = {"https://ehr.test/oauth": Issuer("https://ehr.test/oauth", "*", reader.public())}
    assert verify_token(before, issuer)["institution"] == "IMSS"
    assert verify_token(after, issuer)["institution"] == "IMSS"


def test_keys_retired_longer_than_a_token_lives_are_removed(tmp_path: Path) -> None:
    keys = SigningKeys(Settings(data_dir=tmp_path))
    first = keys.jwks()["keys"][0]["kid"]
    second = keys.rotate()
    # Two days on, the first key's successor is older than any token can live: the next rotation drops it.
    third = keys.rotate(now=time.time() + 2 * 24 * 3600)
    assert {k["kid"] for k in keys.jwks()["keys"]} == {second, third}
    assert first not in {k["kid"] for k in keys.jwks()["keys"]}
