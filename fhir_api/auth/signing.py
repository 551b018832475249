"""The authorization server's signing keys (ES256, RFC 7518 §3.4) and its JWK Set (RFC 7517 §5).

One PEM file per key in ``<data dir>/oauth-keys/`` (owner-readable only), named by its ``kid`` (the RFC 7638
thumbprint). The newest key signs; every key in the directory verifies, so tokens signed before a rotation
keep working until they expire. :meth:`SigningKeys.rotate` adds a key and removes those retired longer than
the longest token lifetime (``tokens._MAX_LIFETIME``) ago: by then no token they signed is still valid.
It imports no HTTP framework: the ``ehr`` command rotates with it.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.jwk import ECKey

from ehr_core.settings import Settings

__all__ = ["SigningKeys"]

_RETIRED_FOR = 24 * 3600 + 300


class SigningKeys:
    """The keys in ``<data dir>/oauth-keys``; re-read when the directory changes (a rotation by ``ehr``)."""

    def __init__(self, settings: Settings) -> None:
        self.directory = settings.data_dir / "oauth-keys"
        self._seen: float | None = None
        self._keys: list[tuple[str, float, ECKey]] = []

    def _write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        private = ec.generate_private_key(ec.SECP256R1())
        kid = ECKey.import_key(private).thumbprint()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path = self.directory / f"{kid}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)

    def _load(self) -> list[tuple[str, float, ECKey]]:
        if not self.directory.is_dir() or not any(self.directory.glob("*.pem")):
            self._write()
        stamp = self.directory.stat().st_mtime
        if stamp != self._seen:
            keys = []
            for path in self.directory.glob("*.pem"):
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                keys.append((path.stem, path.stat().st_mtime, ECKey.import_key(key)))
            self._keys = sorted(keys, key=lambda k: k[1])
            self._seen = stamp
        return self._keys

    def sign(self, claims: dict[str, Any]) -> str:
        kid, _, key = self._load()[-1]
        return jws.serialize_compact({"alg": "ES256", "typ": "JWT", "kid": kid}, orjson.dumps(claims), key, ["ES256"])

    def public(self) -> list[tuple[str | None, Any]]:
        """(kid, public key) pairs for ``tokens.verify_token``."""
        return [(kid, key.get_op_key("verify")) for kid, _, key in self._load()]

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, _, key in self._load():
            keys.append({**key.as_dict(private=False), "kid": kid, "use": "sig", "alg": "ES256"})
        return {"keys": keys}

    def rotate(self, now: float | None = None) -> str:
        """A new signing key; keys retired (superseded) longer ago than a token can live are removed."""
        now = time.time() if now is None else now
        previous = self._load()
        self._write()
        # A key is retired when the next one was created: keep it while tokens it signed may be valid.
        for (kid, _, _), (_, successor_created, _) in itertools.pairwise(previous):
            if now - successor_created > _RETIRED_FOR:
                (self.directory / f"{kid}.pem").unlink(missing_ok=True)
        self._seen = None
        return self._load()[-1][0]
