"""``ehr token``: mint a development bearer token from the local issuer (never in production)."""

from __future__ import annotations

import argparse
import getpass
import sys

from ehr_core.settings import Settings
from fhir_api.auth.issuers import mint_development_token

__all__ = ["add_parser"]


def run(args: argparse.Namespace) -> int:
    settings = Settings() if args.data is None else Settings(data_dir=args.data)
    claims = {
        "sub": args.user or getpass.getuser(),
        "user": args.user or getpass.getuser(),
        "institution": args.institution,
        "unit": args.unit,
        "role": args.role,
        "scope": args.scope,
        "purpose": args.purpose,
    }
    if args.patient:
        claims["patient"] = args.patient
    try:
        token = mint_development_token(settings, {k: v for k, v in claims.items() if v}, args.minutes)
    except RuntimeError as error:
        print(f"ehr token: {error}", file=sys.stderr)
        return 2
    print(token)
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("token", help="mint a development bearer token (local issuer; not in production)")
    parser.add_argument("--institution", required=True, help="IMSS, ISSSTE, IMSS-BIENESTAR...")
    parser.add_argument("--unit", default=None, help="CLUES of the health establishment")
    parser.add_argument("--user", default=None)
    parser.add_argument("--role", default="physician")
    parser.add_argument("--scope", default="user/*.cruds", help='SMART scopes, e.g. "user/*.cruds system/*.rs"')
    parser.add_argument("--purpose", default="TREAT")
    parser.add_argument("--patient", default=None, help="launch context for patient/ scopes")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--data", default=None, help="data directory holding the issuer key")
    parser.set_defaults(handler=run)
