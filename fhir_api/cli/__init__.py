"""The ``ehr`` command: an entry point beside HTTP, over the same composition root (``fhir_api/bootstrap.py``).

One module per subcommand in this package. A command opens ``Services`` through the root and never imports
the HTTP handlers; ``ehr serve`` and ``ehr demo`` start the server through ``fhir_api.server.serve``
(checked by ``lint-imports``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

from ehr_core.files import private_umask
from fhir_api.cli import audit, clients, demo, import_, privacy, project, rebuild, token, verify
from fhir_api.server import serve

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    return serve(args.host, args.port, args.data, args.workers, args.log_level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ehr", description="Event-sourced health record core (FHIR R4)")
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="run the FHIR server")
    serving.add_argument("--host", default="127.0.0.1")
    serving.add_argument("--port", type=int, default=8080)
    serving.add_argument("--data", type=Path, default=None, help="SQLite data directory (default ./ehr-data)")
    serving.add_argument("--workers", type=int, default=1, help="server processes (PostgreSQL only)")
    serving.add_argument("--log-level", default="warning")
    serving.set_defaults(handler=_serve)
    import_.add_parser(commands)
    demo.add_parser(commands)
    verify.add_parsers(commands)
    audit.add_parser(commands)
    privacy.add_parsers(commands)  # Keys, shred, arco-cancel
    token.add_parser(commands)
    clients.add_parsers(commands)  # The authorization server's clients and development users
    project.add_parser(commands)  # The projection worker
    rebuild.add_parser(commands)
    for command in commands_of(parser):
        if "--data" not in command._option_string_actions:
            command.add_argument(
                "--data", type=Path, default=None, help="data directory (default $EHR_DATA_DIR, else ./ehr-data)"
            )
    return parser


def commands_of(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every command that runs (``ehr keys rotate``, not ``ehr keys``): each takes ``--data``."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        yield parser
    for group in groups:
        for command in dict.fromkeys(group.choices.values()):  # aliases name one parser twice
            yield from commands_of(command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every command may create files in the data dir (logs, views, exports, keys): owner-only from the start.
    # Restored afterwards, for callers that run a command in process.
    previous = private_umask()
    # --data is the data directory every command's Settings() reads (EHR_DATA_DIR), set for this command only.
    previous_data = os.environ.get("EHR_DATA_DIR")
    if args.data is not None:
        os.environ["EHR_DATA_DIR"] = str(args.data)
    handler = args.handler
    try:
        result: int = handler(args)
    finally:
        os.umask(previous)
        if previous_data is None:
            os.environ.pop("EHR_DATA_DIR", None)
        else:
            os.environ["EHR_DATA_DIR"] = previous_data
    return result
