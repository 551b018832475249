"""The projection worker ``ehr serve`` starts beside itself on PostgreSQL (``EHR_PROJECTION=auto``).

Read-your-writes makes every write wait for the views' batch, and a batch is one at a time (its tracking row).
Run inside the API process, that batch's Python work and its waits on the database share one interpreter
lock with every request being validated, so the batch all writes wait for is slowed by the requests
queued behind it; the audit log's own views and ledger add their share to every read. In a process of its
own the worker has the second core (figures in the README, *Running*). Nothing is turned off: the API
process waits for the worker's positions as with ``EHR_PROJECTION=worker`` (read-your-writes), and the
worker matches and delivers subscriptions.

The worker is ``ehr project`` itself, started with ``--until-stdin-closes``: it stops after its current batch
when its standard input closes, which the kernel does when the server ends in any way (SIGKILL included),
so it never outlives the server. Should it stop while the server runs, it is started again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import IO

__all__ = ["ProjectionProcess"]

#: How long a stopping server waits for the worker's current batch before ending it.
STOP_SECONDS = 15.0
#: The pause before starting again a worker that stopped on its own (a crash, a kill).
RESTART_SECONDS = 1.0
#: The worker's connection pools (``EHR_POSTGRES_POOL_SIZE``): one thread applies the batches and one matches
#: and delivers, so a few connections are plenty, and the server's pools already take their share of
#: PostgreSQL's ``max_connections``.
POOL_SIZE = 3


class ProjectionProcess:
    """``ehr project --until-stdin-closes`` as a child of this process, started again should it stop."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watch = threading.Thread(target=self._supervise, name="ehr-projection-process", daemon=True)

    def start(self) -> ProjectionProcess:
        self._spawn()
        self._watch.start()
        return self

    def _spawn(self) -> None:
        command = [sys.executable, "-m", "fhir_api.cli", "project", "--until-stdin-closes", "--report-seconds", "0"]
        # Its output goes where the server's goes; the environment (EHR_*) is the server's.
        env = os.environ | {"EHR_POSTGRES_POOL_SIZE": str(POOL_SIZE)}
        with self._lock:
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, env=env)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            process = self._process
            assert process is not None
            code = process.wait()
            if self._stopping.is_set():
                return
            print(
                f"ehr: the projection worker stopped (exit {code}); writes wait for it: starting it again",
                file=sys.stderr,
                flush=True,
            )
            if self._stopping.wait(RESTART_SECONDS):
                return
            self._spawn()

    def stop(self) -> None:
        """End the worker after its current batch (closing its standard input); kill it if it hangs."""
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is None:
            return
        stdin: IO[bytes] | None = process.stdin
        if stdin is not None:
            stdin.close()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
