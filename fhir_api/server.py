"""``serve()``: run the FHIR server (uvicorn over ``fhir_api.app:create_app``), the HTTP entry point.

The one door from the CLI (``ehr serve``, ``ehr demo``) to HTTP: the app is named by its import string,
as uvicorn's worker processes need, so a command never imports the app, its routes or its handlers.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["serve"]

APP = "fhir_api.app:create_app"


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    data: Path | None = None,
    workers: int = 1,
    log_level: str = "warning",
) -> int:
    """Serve until SIGTERM/SIGINT; ``data``: the SQLite data directory (sets ``EHR_DATA_DIR``). On PostgreSQL,
    unless ``EHR_PROJECTION`` says otherwise, with a projection worker of its own beside it
    (``fhir_api/projection_process.py``)."""
    from fhir_api.allocator import limit_malloc_arenas

    limit_malloc_arenas()  # before uvicorn and the app start their threads
    if data is not None:
        os.environ["EHR_DATA_DIR"] = str(data)
    from ehr_core.settings import Settings

    settings = Settings()
    if workers > 1 and not settings.uses_postgres:
        # SQLite has one writer, and each server process's group commit and inline projection assume they are
        # that writer: a second process would wait on the file lock (or fail with "database is locked")
        # instead of sharing the write. Several processes share one store on PostgreSQL only.
        print(
            "ehr: --workers above 1 needs PostgreSQL (EHR_DATABASE_URL); SQLite is served by one process",
            file=sys.stderr,
        )
        return 2
    backend = "PostgreSQL" if settings.uses_postgres else f"SQLite in {settings.data_dir.resolve()}"
    print(f"ehr: FHIR R4 server at http://{host}:{port}/fhir ({backend})", flush=True)
    worker = None
    if settings.serves_with_own_worker:
        from fhir_api.projection_process import ProjectionProcess

        # This process (and uvicorn's, which inherit the environment) waits for the worker's positions
        # instead of projecting; the worker reads the same setting and so matches and delivers subscriptions.
        os.environ["EHR_PROJECTION"] = "worker"
        worker = ProjectionProcess().start()
    try:
        return _run(host, port, workers, log_level, settings.shutdown_timeout_seconds)
    finally:
        if worker is not None:
            worker.stop()


def _run(host: str, port: int, workers: int, log_level: str, grace: int) -> int:
    import uvicorn

    if workers > 1:
        uvicorn.run(
            APP,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=grace,
        )
        return 0
    config = uvicorn.Config(
        APP,
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
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
