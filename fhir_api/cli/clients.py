"""``ehr clients`` and ``ehr users``: the authorization server's registered clients (per institution) and
its development user store (``/oauth``; SMART App Launch 2.x, SMART Backend Services).

A client is a browser app (``--redirect-uri``, ``--public`` when it holds no key: PKCE only) or a backend
service (``--jwks-file``/``--jwks-url``: its public keys for ``private_key_jwt``). ``disable`` takes effect
at once: the resource server and introspection read the client's status at every use.

The user store is for development only (like the development master key): production institutions sign
users in at their own OpenID Connect provider. Passwords are hashed with Argon2id (argon2-cffi).
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
import time
from pathlib import Path

import orjson

from ehr_core.settings import Settings
from fhir_api.bootstrap import construct_views
from projections.db import ViewDatabase
from projections.oauth import Client, OAuthStore, User

__all__ = ["add_parsers"]


def _store(args: argparse.Namespace) -> tuple[OAuthStore, ViewDatabase]:
    settings = Settings() if args.data is None else Settings(data_dir=Path(args.data))
    views = construct_views(settings)
    return OAuthStore(views), views


def _add_client(args: argparse.Namespace) -> int:
    if args.institution.strip() in ("", "*"):
        # A client of "every institution" may sign in any institution's user; only the server's own web
        # view is registered so (by the server itself), never an app from the command line.
        print("ehr clients add: --institution names one institution (its identifier, e.g. IMSS)", file=sys.stderr)
        return 2
    if not args.public and not (args.jwks_file or args.jwks_url):
        print(
            "ehr clients add: a confidential client needs --jwks-file or --jwks-url (or say --public)", file=sys.stderr
        )
        return 2
    jwks = orjson.loads(Path(args.jwks_file).read_bytes()) if args.jwks_file else None
    client_id = args.client_id or secrets.token_urlsafe(12)
    store, views = _store(args)
    try:
        client = Client(
            client_id,
            args.institution,
            args.name or client_id,
            list(args.redirect_uri or []),
            jwks,
            args.jwks_url,
            bool(args.public),
            False,
        )
        store.add_client(client, int(time.time()))
    finally:
        views.close()
    print(client_id)
    return 0


def _list_clients(args: argparse.Namespace) -> int:
    store, views = _store(args)
    try:
        for c in store.clients():
            kind = "public" if c.public else "private_key_jwt"
            state = "disabled" if c.disabled else "active"
            print(f"{c.client_id}\t{c.institution}\t{c.name}\t{kind}\t{state}\t{' '.join(c.redirect_uris)}")
    finally:
        views.close()
    return 0


def _disable_client(args: argparse.Namespace) -> int:
    store, views = _store(args)
    try:
        found = store.disable_client(args.client_id)
    finally:
        views.close()
    if not found:
        print(f"ehr clients disable: no client {args.client_id!r}", file=sys.stderr)
        return 1
    return 0


def _add_user(args: argparse.Namespace) -> int:
    from argon2 import PasswordHasher

    settings = Settings() if args.data is None else Settings(data_dir=Path(args.data))
    if settings.production:
        print("ehr users add: the development user store does not exist with EHR_ENV=production", file=sys.stderr)
        return 2
    password = args.password or getpass.getpass("password: ")
    store, views = _store(args)
    try:
        user = User(
            args.username, args.institution, args.unit, args.role, args.practitioner, PasswordHasher().hash(password)
        )
        store.add_user(user)
    finally:
        views.close()
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    from fhir_api.auth.signing import SigningKeys

    settings = Settings() if args.data is None else Settings(data_dir=Path(args.data))
    print(SigningKeys(settings).rotate())
    return 0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    clients = commands.add_parser("clients", help="the authorization server's registered clients (/oauth)")
    sub = clients.add_subparsers(dest="clients_command", required=True)
    add = sub.add_parser("add", help="register a client for an institution")
    add.add_argument("--institution", required=True)
    add.add_argument("--redirect-uri", action="append", help="exact redirect URI (repeatable)")
    keys = add.add_mutually_exclusive_group()
    keys.add_argument("--jwks-file", help="the client's JWK Set (public keys) for private_key_jwt")
    keys.add_argument("--jwks-url", help="where the client publishes its JWK Set")
    add.add_argument("--public", action="store_true", help="a public client (browser app: PKCE, no key)")
    add.add_argument("--name", default=None)
    add.add_argument("--client-id", default=None, help="default: a random id")
    add.add_argument("--data", default=None)
    add.set_defaults(handler=_add_client)
    listing = sub.add_parser("list", help="the registered clients")
    listing.add_argument("--data", default=None)
    listing.set_defaults(handler=_list_clients)
    disable = sub.add_parser("disable", help="disable a client: its tokens stop working at once")
    disable.add_argument("client_id")
    disable.add_argument("--data", default=None)
    disable.set_defaults(handler=_disable_client)
    rotate = sub.add_parser("rotate-signing-key", help="a new token signing key (older ones verify until expiry)")
    rotate.add_argument("--data", default=None)
    rotate.set_defaults(handler=_rotate_key)
    users = commands.add_parser("users", help="the development user store (never in production)")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    user_add = users_sub.add_parser("add", help="add (or replace) a development user")
    user_add.add_argument("username")
    user_add.add_argument("--institution", required=True)
    user_add.add_argument("--unit", default=None, help="CLUES of the health establishment")
    user_add.add_argument("--role", default="physician")
    user_add.add_argument("--practitioner", default=None, help="the user's Practitioner id (fhirUser)")
    user_add.add_argument("--password", default=None, help="default: asked for")
    user_add.add_argument("--data", default=None)
    user_add.set_defaults(handler=_add_user)
