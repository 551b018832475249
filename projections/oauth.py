"""The authorization server's state (SMART App Launch 2.x, RFC 6749): clients, development users, pending
authorizations, codes, refresh tokens, seen client-assertion ``jti`` values, revoked access tokens, launch
contexts.

Not a projection of the event log: these rows are the authorization server's own, in the views' database
(beside the events: the same PostgreSQL schema, or ``views.sqlite``), so they survive restarts and are
shared by every server process; a projection rebuild never touches them (they belong to no view). Codes and
refresh tokens are kept by their SHA-256 only: a copy of the database hands out no usable token.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from projections.db import ViewDatabase

__all__ = ["Client", "OAuthStore", "User", "digest"]

_TABLES = (
    "CREATE TABLE IF NOT EXISTS oauth_clients (client_id TEXT PRIMARY KEY, institution TEXT NOT NULL, "
    "name TEXT NOT NULL, redirect_uris TEXT NOT NULL, jwks TEXT, jwks_url TEXT, public INTEGER NOT NULL, "
    "disabled INTEGER NOT NULL, created BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_users (username TEXT PRIMARY KEY, institution TEXT NOT NULL, unit TEXT, "
    "role TEXT NOT NULL, practitioner TEXT, password_hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_requests (request_id TEXT PRIMARY KEY, body TEXT NOT NULL, "
    "expires BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_codes (code_hash TEXT PRIMARY KEY, client_id TEXT NOT NULL, "
    "body TEXT NOT NULL, expires BIGINT NOT NULL, used INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_refresh (token_hash TEXT PRIMARY KEY, family TEXT NOT NULL, "
    "client_id TEXT NOT NULL, body TEXT NOT NULL, expires BIGINT NOT NULL, used INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_revoked_families (family TEXT PRIMARY KEY, revoked BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_assertions (client_id TEXT NOT NULL, jti TEXT NOT NULL, "
    "expires BIGINT NOT NULL, PRIMARY KEY (client_id, jti))",
    "CREATE TABLE IF NOT EXISTS oauth_revoked_tokens (jti TEXT PRIMARY KEY, expires BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS oauth_launches (launch_id TEXT PRIMARY KEY, body TEXT NOT NULL, "
    "expires BIGINT NOT NULL)",
)


def digest(secret: str) -> str:
    """What is stored of a code or refresh token: its SHA-256 (hex)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Client:
    client_id: str
    institution: str
    name: str
    redirect_uris: list[str]
    jwks: dict[str, Any] | None
    jwks_url: str | None
    public: bool
    disabled: bool


@dataclass(frozen=True)
class User:
    username: str
    institution: str
    unit: str | None
    role: str
    practitioner: str | None
    password_hash: str


_CLIENT_COLUMNS = "client_id, institution, name, redirect_uris, jwks, jwks_url, public, disabled"


def _client(row: tuple[Any, ...]) -> Client:
    return Client(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        list(orjson.loads(row[3])),
        orjson.loads(row[4]) if row[4] else None,
        row[5],
        bool(row[6]),
        bool(row[7]),
    )


class OAuthStore:
    """The authorization server's rows. Every one-time use (a code, a refresh token, an assertion's ``jti``)
    is claimed by one conditional write, so two racing requests cannot both win (RFC 6749 §4.1.2, §10.4)."""

    def __init__(self, database: ViewDatabase) -> None:
        self.database = database
        with database.write() as tx:
            for statement in _TABLES:
                tx.execute(statement)

    # Clients -------------------------------------------------------------------------------------------
    def add_client(self, client: Client, now: int, keep_existing: bool = False) -> None:
        """``keep_existing``: a client already registered under that id is kept as it is (disabled or not),
        so every server process may register a built-in client at start."""
        on_conflict = " ON CONFLICT (client_id) DO NOTHING" if keep_existing else ""
        with self.database.write() as tx:
            tx.execute(
                f"INSERT INTO oauth_clients ({_CLIENT_COLUMNS}, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                + on_conflict,
                (
                    client.client_id,
                    client.institution,
                    client.name,
                    orjson.dumps(client.redirect_uris).decode(),
                    orjson.dumps(client.jwks).decode() if client.jwks else None,
                    client.jwks_url,
                    int(client.public),
                    int(client.disabled),
                    now,
                ),
            )

    def client(self, client_id: str) -> Client | None:
        # The primary, not a replica: a client disabled a moment ago is disabled now.
        with self.database.read_primary() as tx:
            row = tx.execute(
                f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = ?", (client_id,)
            ).fetchone()
        return None if row is None else _client(row)

    def clients(self) -> list[Client]:
        with self.database.read_primary() as tx:
            rows = tx.execute(f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients ORDER BY created, client_id").fetchall()
        return [_client(r) for r in rows]

    def disable_client(self, client_id: str) -> bool:
        with self.database.write() as tx:
            row = tx.execute(
                "UPDATE oauth_clients SET disabled = 1 WHERE client_id = ? RETURNING client_id", (client_id,)
            ).fetchone()
        return row is not None

    # Users ---------------------------------------------------------------------------------------------
    def add_user(self, user: User) -> None:
        with self.database.write() as tx:
            tx.upsert(
                "oauth_users",
                ("username", "institution", "unit", "role", "practitioner", "password_hash"),
                ("username",),
                [(user.username, user.institution, user.unit, user.role, user.practitioner, user.password_hash)],
            )

    def user(self, username: str) -> User | None:
        with self.database.read_primary() as tx:
            row = tx.execute(
                "SELECT username, institution, unit, role, practitioner, password_hash FROM oauth_users "
                "WHERE username = ?",
                (username,),
            ).fetchone()
        return None if row is None else User(*row)

    # Pending authorizations and launch contexts ------------------------------------------------------------
    def put(self, table: str, key: str, body: dict[str, Any], expires: int) -> None:
        assert table in ("oauth_requests", "oauth_launches")
        column = "request_id" if table == "oauth_requests" else "launch_id"
        with self.database.write() as tx:
            tx.execute(
                f"INSERT INTO {table} ({column}, body, expires) VALUES (?, ?, ?)",
                (key, orjson.dumps(body).decode(), expires),
            )

    def get(self, table: str, key: str, now: int) -> dict[str, Any] | None:
        assert table in ("oauth_requests", "oauth_launches")
        column = "request_id" if table == "oauth_requests" else "launch_id"
        with self.database.read_primary() as tx:
            row = tx.execute(f"SELECT body, expires FROM {table} WHERE {column} = ?", (key,)).fetchone()
        if row is None or int(row[1]) < now:
            return None
        body: dict[str, Any] = orjson.loads(row[0])
        return body

    def take(self, table: str, key: str, now: int) -> dict[str, Any] | None:
        """Like :meth:`get`, and the row is gone: a value good for one use (an OpenID Connect ``state``)."""
        assert table in ("oauth_requests", "oauth_launches")
        column = "request_id" if table == "oauth_requests" else "launch_id"
        with self.database.write() as tx:
            row = tx.execute(f"DELETE FROM {table} WHERE {column} = ? RETURNING body, expires", (key,)).fetchone()
        if row is None or int(row[1]) < now:
            return None
        body: dict[str, Any] = orjson.loads(row[0])
        return body

    # Authorization codes -------------------------------------------------------------------------------
    def add_code(self, code: str, client_id: str, body: dict[str, Any], expires: int) -> None:
        with self.database.write() as tx:
            tx.execute(
                "INSERT INTO oauth_codes (code_hash, client_id, body, expires, used) VALUES (?, ?, ?, ?, 0)",
                (digest(code), client_id, orjson.dumps(body).decode(), expires),
            )

    def redeem_code(self, code: str) -> tuple[str, dict[str, Any], int] | str:
        """The code's client, body and expiry, marked used; or why not: ``unknown`` or ``used`` (RFC 6749
        §4.1.2: a code is used once; a second use should revoke what the first gave, see ``family``)."""
        with self.database.write() as tx:
            row = tx.execute(
                "UPDATE oauth_codes SET used = 1 WHERE code_hash = ? AND used = 0 RETURNING client_id, body, expires",
                (digest(code),),
            ).fetchone()
            if row is None:
                seen = tx.execute("SELECT body FROM oauth_codes WHERE code_hash = ?", (digest(code),)).fetchone()
                if seen is None:
                    return "unknown"
                family = orjson.loads(seen[0]).get("family")
                if family:
                    tx.upsert("oauth_revoked_families", ("family", "revoked"), ("family",), [(family, 1)])
                return "used"
        return str(row[0]), orjson.loads(row[1]), int(row[2])

    # Refresh tokens ------------------------------------------------------------------------------------
    def add_refresh(self, token: str, family: str, client_id: str, body: dict[str, Any], expires: int) -> None:
        with self.database.write() as tx:
            tx.execute(
                "INSERT INTO oauth_refresh (token_hash, family, client_id, body, expires, used) "
                "VALUES (?, ?, ?, ?, ?, 0)",
                (digest(token), family, client_id, orjson.dumps(body).decode(), expires),
            )

    def redeem_refresh(self, token: str) -> tuple[str, str, dict[str, Any], int] | str:
        """(family, client, body, expiry) of a live refresh token, now used (rotation); ``unknown``,
        ``revoked``, or ``reused`` — a used one presented again revokes its whole family (OAuth 2.0 Security
        BCP, RFC 9700 §4.14.2: refresh token rotation with reuse detection)."""
        with self.database.write() as tx:
            row = tx.execute(
                "UPDATE oauth_refresh SET used = 1 WHERE token_hash = ? AND used = 0 "
                "RETURNING family, client_id, body, expires",
                (digest(token),),
            ).fetchone()
            if row is None:
                seen = tx.execute("SELECT family FROM oauth_refresh WHERE token_hash = ?", (digest(token),)).fetchone()
                if seen is None:
                    return "unknown"
                tx.upsert("oauth_revoked_families", ("family", "revoked"), ("family",), [(seen[0], 1)])
                return "reused"
            revoked = tx.execute("SELECT 1 FROM oauth_revoked_families WHERE family = ?", (row[0],)).fetchone()
        if revoked is not None:
            return "revoked"
        return str(row[0]), str(row[1]), orjson.loads(row[2]), int(row[3])

    def refresh_status(self, token: str, now: int) -> tuple[str, dict[str, Any]] | None:
        """A live refresh token's client and body (introspection), else None."""
        with self.database.read_primary() as tx:
            row = tx.execute(
                "SELECT r.client_id, r.body, r.expires FROM oauth_refresh r WHERE r.token_hash = ? AND r.used = 0 "
                "AND NOT EXISTS (SELECT 1 FROM oauth_revoked_families f WHERE f.family = r.family)",
                (digest(token),),
            ).fetchone()
        if row is None or int(row[2]) < now:
            return None
        return str(row[0]), orjson.loads(row[1])

    def revoke_refresh(self, token: str) -> None:
        with self.database.write() as tx:
            row = tx.execute("SELECT family FROM oauth_refresh WHERE token_hash = ?", (digest(token),)).fetchone()
            if row is not None:
                tx.upsert("oauth_revoked_families", ("family", "revoked"), ("family",), [(row[0], 1)])

    def revoke_refresh_family(self, family: str) -> None:
        with self.database.write() as tx:
            tx.upsert("oauth_revoked_families", ("family", "revoked"), ("family",), [(family, 1)])

    # Access tokens, client assertions -----------------------------------------------------------------
    def revoke_access(self, jti: str, expires: int) -> None:
        with self.database.write() as tx:
            tx.upsert("oauth_revoked_tokens", ("jti", "expires"), ("jti",), [(jti, expires)])

    def access_refused(self, client_id: str | None, jti: str | None, family: str | None) -> str | None:
        """Why an access token this server issued no longer works (its client disabled, it or its refresh
        family revoked), else None. One primary read per request: nothing cached, so a disabled client's
        tokens stop at once."""
        with self.database.read_primary() as tx:
            if client_id is not None:
                row = tx.execute("SELECT disabled FROM oauth_clients WHERE client_id = ?", (client_id,)).fetchone()
                if row is None or row[0]:
                    return "the token's client is disabled"
            if jti and tx.execute("SELECT 1 FROM oauth_revoked_tokens WHERE jti = ?", (jti,)).fetchone():
                return "the token was revoked"
            if family and tx.execute("SELECT 1 FROM oauth_revoked_families WHERE family = ?", (family,)).fetchone():
                return "the token's grant was revoked"
        return None

    def claim_assertion(self, client_id: str, jti: str, expires: int, now: int) -> bool:
        """Whether this client assertion ``jti`` is new (SMART Backend Services: the server must reject a
        ``jti`` it has seen before, while the assertion could still be valid). Expired rows are dropped."""
        with self.database.write() as tx:
            tx.execute("DELETE FROM oauth_assertions WHERE expires < ?", (now - 600,))
            seen = tx.execute(
                "SELECT 1 FROM oauth_assertions WHERE client_id = ? AND jti = ?", (client_id, jti)
            ).fetchone()
            if seen is not None:
                return False
            tx.execute(
                "INSERT INTO oauth_assertions (client_id, jti, expires) VALUES (?, ?, ?)", (client_id, jti, expires)
            )
        return True

    def institution_patients(self, institution: str, limit: int = 50) -> list[str]:
        """The Patients ``institution`` owns (the access view's owners), for the standalone launch's patient
        picker: a user picks among their own institution's patients only."""
        with self.database.read() as tx:
            rows = tx.execute(
                "SELECT resource_id FROM resource_owners WHERE resource_type = 'Patient' AND institution = ? "
                "ORDER BY resource_id LIMIT ?",
                (institution, limit),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def patient_owned(self, institution: str, patient: str) -> bool:
        with self.database.read() as tx:
            row = tx.execute(
                "SELECT 1 FROM resource_owners WHERE resource_type = 'Patient' AND resource_id = ? AND institution = ?",
                (patient, institution),
            ).fetchone()
        return row is not None
