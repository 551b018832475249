"""Settings as environment (``EHR_*``), typed: the eventsourcing library's own habit."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ehr_core.files import private_sqlite

__all__ = ["OpenIDProvider", "Settings"]


class OpenIDProvider(BaseModel):
    """One institution's OpenID Connect provider (OpenID Connect Core 1.0, authorization code flow): its users
    sign in there, and the claims of its ``id_token`` say who they are at the institution. The endpoints and
    keys come from ``{issuer}/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4)."""

    model_config = {"extra": "forbid"}

    issuer: str
    client_id: str
    #: The client secret this server authenticates with at the provider's token endpoint
    #: (``client_secret_basic``, OpenID Connect Core §9), or a file holding it.
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    #: Shown on the login page ("Entrar con ... / Sign in with ..."); the institution's name by default.
    display_name: str | None = None
    scope: str = "openid profile"
    #: The claims carrying the user, the institution (checked: a provider vouches only for its own
    #: institution), the unit (CLUES), the role, and the user's Practitioner id (for ``fhirUser``).
    user_claim: str = "sub"
    institution_claim: str | None = None
    unit_claim: str | None = None
    role_claim: str | None = None
    practitioner_claim: str | None = None

    def secret(self) -> str | None:
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file is not None:
            return self.client_secret_file.read_text().strip()
        return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EHR_", extra="ignore")

    #: ``postgresql://user:password@host:port/dbname``; unset means SQLite files under ``data_dir``.
    database_url: str | None = None
    #: PostgreSQL schema holding the event table and the views (one deployment per schema).
    postgres_schema: str = "public"
    data_dir: Path = Path("ehr-data")
    #: Largest request body accepted, in bytes (413 above it).
    max_body_bytes: int = 16 * 1024 * 1024
    #: Most entries a transaction or batch Bundle may hold (413 above it).
    max_bundle_entries: int = 10_000
    # -- limits that protect the server (fhir_api/limits.py) ----------------------------
    #: Deepest nesting of JSON objects and arrays in a body (400 above it); R4 resources stay far below.
    max_json_depth: int = 100
    #: Largest page a search or history answers; a larger ``_count`` is served as this (R4 §3.1.1.6.3).
    max_count: int = 1000
    #: Time for a request: its body must arrive (408), a read must finish and a write must reach its
    #: append (503) within it. A write already appending is never cut off.
    request_timeout_seconds: float = 30.0
    #: After SIGTERM: how long requests in flight may take to finish before they are abandoned (the
    #: process exits at the latest 10 s later, whatever is still blocked).
    shutdown_timeout_seconds: int = 10
    #: Notifications a projection handles in one transaction.
    projection_batch_size: int = 500
    #: Days a completed referral still lets the receiving institution read the patient's record (the
    #: counter-referral's follow-up); the grant starts at acceptance and ends at once on cancel or reject.
    #: Periods are computed when the referral Task is projected: a change applies after ``ehr rebuild``.
    referral_grant_days: int = Field(default=90, ge=0, le=3650)
    #: Who applies events to the views: ``inline`` — each API process, after its own writes and
    #: following the others' (LISTEN); ``worker`` — a separate ``ehr project`` process (PostgreSQL), which
    #: the API processes wait for (read-your-writes) instead of projecting themselves; ``auto`` (the
    #: default) — ``ehr serve`` on PostgreSQL starts that worker itself, as a child process it supervises,
    #: and is ``worker`` from then on; everywhere else (SQLite, a library opening the store) ``inline``.
    projection: str = "auto"
    #: With ``projection=worker``: how long a write waits for the worker before answering anyway.
    projection_wait_seconds: float = 30.0
    # -- subscriptions (R4 subscription.html, Subscriptions R5 Backport IG 1.1.0) ------------
    #: The first retry of a failed notification waits this long; each next one twice as long.
    subscription_retry_base_seconds: float = 1.0
    #: The longest wait between two attempts at one notification.
    subscription_retry_max_seconds: float = 300.0
    #: Failed attempts at one notification before the subscription is set to ``error``.
    subscription_max_attempts: int = 12
    #: Plain http endpoints beyond loopback (development only): otherwise https, or http on loopback.
    subscription_allow_http: bool = False
    #: The server's public FHIR base, for the references in notifications (``fullUrl``, ``subscription``).
    subscription_base_url: str = "http://127.0.0.1:8080/fhir"
    #: How often the delivery thread looks for matched events when idle.
    subscription_poll_seconds: float = 0.05
    #: While writes commit, the largest fraction of the time subscription delivery's CPU may take in the
    #: process that takes them (``fhir_api/delivery_pacing.py``): it lags during a burst and catches up after,
    #: at full speed once no write came for half a second. 1: never paced.
    subscription_delivery_share: float = Field(default=0.1, gt=0, le=1)
    #: Connections each PostgreSQL pool may hold.
    postgres_pool_size: int = 10
    # -- per-institution stores federated into national projections -----------------------
    #: Each institution's own event store, ``NAME=postgresql://...`` separated by commas or newlines (e.g.
    #: ``IMSS=postgresql://db-imss/ehr,ISSSTE=postgresql://db-issste/ehr``). Set, ``database_url`` is the
    #: national database: the views every store's log is projected into, the MPI's decisions, the audit log.
    stores: str = ""
    #: The store this server writes to (its institution); the first of ``stores`` when unset.
    store: str | None = None
    #: Seconds to wait for a connection to a store. The event store's driver tries ten times, so a store
    #: that goes down holds the requests already waiting on it ~10 x this before their 503 (later ones get
    #: theirs at once, see ``ehr_core.federation.StoreGuard``); the national database is given 30 s.
    store_connect_timeout_seconds: int = 1
    #: A streaming replica of the national database (``database_url``): searches, reads, history and
    #: ``$everything`` are answered there; writes, projections and LISTEN stay on the primary. A write is
    #: answered once the replica has replayed it too (read-your-writes; a standby cannot LISTEN, so its
    #: replay is polled).
    views_replica_url: str | None = None
    #: Seconds to wait for a PostgreSQL connection before answering 503.
    postgres_connect_timeout_seconds: int = 30
    #: Longest a PostgreSQL statement may run (``statement_timeout`` on every connection): a stuck one ends
    #: in an error (503) instead of holding its request, and its locks, for ever.
    postgres_statement_timeout_seconds: float = 60.0
    #: Analyse each table of the schema once projections changed more than max(1,000 rows, 10 %) of it, on a
    #: background connection (``projections/statistics.py``): the planner's statistics stay fresh even where
    #: autovacuum is off. Off only where something else analyses the tables.
    postgres_auto_analyze: bool = True
    #: Longest an append waits for the event table's ordering lock (another append holding it): then 503.
    postgres_lock_timeout_seconds: int = 10
    #: A connection left inside a transaction this long is closed by the server (its locks released).
    postgres_idle_in_transaction_timeout_seconds: float = 60.0
    #: Data sent and not acknowledged this long (the database's host gone) fails the socket (``tcp_user_timeout``).
    postgres_tcp_user_timeout_seconds: float = 30.0
    #: Largest stored resource, in bytes (its JSON with server ``meta``): 413 above it, for REST writes,
    #: Bundle entries and imports alike. Well below ``max_body_bytes``: one event carries the whole resource,
    #: and every projection of it is written in one transaction.
    max_resource_bytes: int = 4 * 1024 * 1024
    #: The only directory ``$import`` over HTTP reads from (``file://`` URLs inside it; nothing is fetched
    #: from the network). Unset: ``DATA_DIR/import``. See :attr:`import_root`.
    import_dir: Path | None = None
    # -- keys and access ------------------------------------------------------------------
    #: ``production`` refuses to start without a master key and without authentication.
    env: str = "development"
    #: The master key that wraps every data key: base64 of 32 bytes (or ``master_key_file``).
    master_key: str | None = None
    master_key_file: Path | None = None
    #: The master key before a rotation, while it is in progress (rows name the master that wrapped them).
    master_key_previous_file: Path | None = None
    #: Bearer-token authentication: ``required`` (the default); ``disabled-for-development`` turns it off.
    auth: str = "required"
    #: Trusted issuers: a directory of ``*.json`` files (issuer, institution, PEM public keys or a JWKS).
    auth_issuers_dir: Path | None = None
    #: The server's root URL as its users reach it (``https://ehr.example.org``, behind a reverse proxy):
    #: the authorization server's issuer, the endpoints in discovery, the FHIR base of tokens' ``aud`` and of
    #: the answers' URLs, the redirects. Unset: the root each request was addressed to.
    public_url: str | None = None
    #: Each institution's OpenID Connect provider, as JSON ``{"IMSS": {"issuer": ..., "client_id": ...,
    #: "client_secret": ..., "unit_claim": ..., "role_claim": ...}}`` (:class:`OpenIDProvider`): the
    #: production way users sign in at the authorization server; the local user store is for development.
    oidc_providers: dict[str, OpenIDProvider] = Field(default_factory=dict)
    #: Origins whose browser apps may call the API (CORS, comma-separated; ``*`` any): SMART apps run in
    #: the browser on their own origin. Bearer tokens, not cookies, authorize those calls.
    cors_origins: str = "*"

    @property
    def import_root(self) -> Path:
        """Where ``$import`` may read NDJSON: ``import_dir``, or ``import`` in the data directory."""
        return self.import_dir if self.import_dir is not None else self.data_dir / "import"

    @property
    def production(self) -> bool:
        return self.env.strip().lower() in ("production", "prod")

    @property
    def auth_disabled(self) -> bool:
        return self.auth == "disabled-for-development"

    @property
    def projects_inline(self) -> bool:
        return self.projection.strip().lower() != "worker"

    @property
    def serves_with_own_worker(self) -> bool:
        """Whether ``ehr serve`` starts its own projection worker: ``auto`` on PostgreSQL. SQLite has one
        writer, which the server's own inline projection already is."""
        return self.uses_postgres and self.projection.strip().lower() == "auto"

    @property
    def federated(self) -> bool:
        return bool(self.store_urls())

    def store_urls(self) -> dict[str, str]:
        """``stores`` as {institution: database URL}, in the order given."""
        urls: dict[str, str] = {}
        for item in self.stores.replace("\n", ",").split(","):
            name, _, url = item.strip().partition("=")
            if not name.strip():
                continue
            if not url.strip().startswith(("postgres://", "postgresql://")):
                raise ValueError(f"EHR_STORES: {name.strip()!r} needs a postgresql:// URL (NAME=postgresql://...)")
            urls[name.strip()] = url.strip()
        return urls

    def own_store(self) -> str:
        """The store this server's writes go to."""
        names = list(self.store_urls())
        name = self.store or (names[0] if names else "")
        if name not in names:
            raise ValueError(f"EHR_STORE={name!r} is not one of EHR_STORES ({', '.join(names)})")
        return name

    def for_store(self, name: str) -> Settings:
        """The settings of one institution's store: its database, everything else as here."""
        return self.model_copy(
            update={
                "database_url": self.store_urls()[name],
                "stores": "",
                "store": None,
                "postgres_connect_timeout_seconds": self.store_connect_timeout_seconds,
            }
        )

    @property
    def uses_postgres(self) -> bool:
        return bool(self.database_url) and str(self.database_url).startswith(("postgres://", "postgresql://"))

    def postgres_params(self) -> dict[str, str]:
        """Connection parameters from ``database_url`` (libpq keywords)."""
        url = urlsplit(str(self.database_url))
        return {
            "host": url.hostname or "127.0.0.1",
            "port": str(url.port or 5432),
            "user": unquote(url.username or "postgres"),
            "password": unquote(url.password or ""),
            "dbname": url.path.lstrip("/") or "postgres",
        }

    def postgres_options(self) -> str:
        """Server settings of every connection (libpq ``options``): statements, locks and idle transactions
        end in an error after their timeout, never hold a request or a lock indefinitely."""
        return (
            f"-c statement_timeout={_ms(self.postgres_statement_timeout_seconds)} "
            f"-c lock_timeout={_ms(self.postgres_statement_timeout_seconds)} "
            f"-c idle_in_transaction_session_timeout={_ms(self.postgres_idle_in_transaction_timeout_seconds)}"
        )

    def postgres_socket_params(self) -> dict[str, str]:
        """TCP keepalives and a user timeout: a peer gone silent fails the socket in seconds, not TCP's minutes."""
        return {
            "keepalives": "1",
            "keepalives_idle": "10",
            "keepalives_interval": "5",
            "keepalives_count": "3",
            "tcp_user_timeout": str(_ms(self.postgres_tcp_user_timeout_seconds)),
        }

    def postgres_conninfo(self) -> str:
        params = (
            self.postgres_params()
            | {"connect_timeout": str(self.postgres_connect_timeout_seconds)}
            | self.postgres_socket_params()
        )
        if not params["password"]:
            params.pop("password")
        params["options"] = "'" + self.postgres_options().replace("\\", "\\\\").replace("'", "\\'") + "'"
        return " ".join(f"{key}={value}" for key, value in params.items())

    def replica_conninfo(self) -> str | None:
        """libpq parameters of ``views_replica_url`` (None without one)."""
        if not self.views_replica_url:
            return None
        return self.model_copy(update={"database_url": self.views_replica_url}).postgres_conninfo()

    def event_store_env(self) -> dict[str, str]:
        """The eventsourcing library's environment for the chosen backend."""
        if self.uses_postgres:
            params = self.postgres_params()
            kept_open = min(2, self.postgres_pool_size)
            return {
                # The library's PostgreSQL store, appending without pipeline mode (see ehr_core/pgstore.py).
                "PERSISTENCE_MODULE": "ehr_core.pgstore:Factory",
                "POSTGRES_HOST": params["host"],
                "POSTGRES_PORT": params["port"],
                "POSTGRES_USER": params["user"],
                "POSTGRES_PASSWORD": params["password"],
                "POSTGRES_DBNAME": params["dbname"],
                "POSTGRES_SCHEMA": self.postgres_schema,
                # The library's pools open POOL_SIZE connections at once and up to MAX_OVERFLOW more on demand:
                # two kept open per log (the clinical and the audit one), the same ceiling as before under
                # load, so an idle server and its projection worker do not hold ~40 of max_connections.
                "POSTGRES_POOL_SIZE": str(kept_open),
                "POSTGRES_MAX_OVERFLOW": str(self.postgres_pool_size + self.postgres_pool_size // 2 - kept_open),
                "POSTGRES_LOCK_TIMEOUT": str(self.postgres_lock_timeout_seconds),
                "POSTGRES_CONNECT_TIMEOUT": str(self.postgres_connect_timeout_seconds),
                "EHR_POSTGRES_OPTIONS": self.postgres_options(),
                **{f"EHR_POSTGRES_{key.upper()}": value for key, value in self.postgres_socket_params().items()},
                # Never POSTGRES_ENABLE_DB_FUNCTIONS: it skips the ordering lock (DESIGN.md).
            }
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(private_sqlite(self.data_dir / "events.sqlite")),
            "SQLITE_LOCK_TIMEOUT": "30",
        }


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
