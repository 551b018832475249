"""The ``ehr`` command."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ehr_core.files import private_umask
from fhir_api.commands import (  # 6: audit, verify; 5: demo; 7: privacy, token
    audit,
    demo,
    import_,
    privacy,
    project,
    rebuild,
    token,
    verify,
)

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from fhir_api.allocator import limit_malloc_arenas

    limit_malloc_arenas()  # before uvicorn and the app start their threads
    import uvicorn

    if args.data is not None:
        os.environ["EHR_DATA_DIR"] = str(args.data)
    from ehr_core.settings import Settings

    settings = Settings()
    backend = "PostgreSQL" if settings.uses_postgres else f"SQLite in {settings.data_dir.resolve()}"
    print(f"ehr: FHIR R4 server at http://{args.host}:{args.port}/fhir ({backend})", flush=True)
    grace = settings.shutdown_timeout_seconds
    if args.workers > 1:
        uvicorn.run(
            "fhir_api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=grace,
        )
        return 0
    config = uvicorn.Config(
        "fhir_api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        # After SIGTERM, requests in flight get this long to finish, then are cancelled.
        timeout_graceful_shutdown=grace,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=_exit_after_shutdown_stalls, args=(server, grace), daemon=True).start()
    server.run()
    return 0


def _exit_after_shutdown_stalls(server: Any, grace: int) -> None:
    """Bound a shutdown: uvicorn cancels the requests' tasks after ``grace``, but a worker thread blocked in
    the database (a statement waiting on a lock) cannot be cancelled and would keep the process alive, so
    SIGTERM ends the process at the latest ``grace`` + 10 s after it arrived."""
    while not server.should_exit:
        time.sleep(0.2)
    time.sleep(grace + 10)
    print(f"ehr: shutdown still not finished {grace + 10:.0f} s after the signal; exiting", file=sys.stderr, flush=True)
    os._exit(3)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ehr", description="Event-sourced health record core (FHIR R4)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the FHIR server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--data", type=Path, default=None, help="SQLite data directory (default ./ehr-data)")
    serve.add_argument("--workers", type=int, default=1, help="server processes (PostgreSQL only)")
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(handler=_serve)
    import_.add_parser(commands)
    demo.add_parser(commands)
    verify.add_parsers(commands)
    audit.add_parser(commands)
    privacy.add_parsers(commands)  # Keys, shred, arco-cancel
    token.add_parser(commands)
    project.add_parser(commands)  # The projection worker
    rebuild.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every command may create files in the data dir (logs, views, exports, keys): owner-only from the start.
    # Restored afterwards, for callers that run a command in process.
    previous = private_umask()
    handler = args.handler
    try:
        result: int = handler(args)
    finally:
        os.umask(previous)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
