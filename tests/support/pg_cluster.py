"""A private PostgreSQL cluster for tests that must stop, restart or break the database.

The shared server on port 5432 serves everyone's tests and is never touched. :class:`PgCluster` runs
``initdb`` into a temporary directory, starts ``postgres`` on a free loopback port (trust authentication,
listening on 127.0.0.1 only, socket in the cluster directory) and can stop, restart or kill it. As root
the binaries run as the ``postgres`` OS user (``initdb`` refuses root), through ``runuser``.

Usage::

    with PgCluster.started("institution-a") as cluster:
        url = cluster.url("ehr")          # postgresql://postgres@127.0.0.1:PORT/ehr (created on demand)
        cluster.restart()                 # fast shutdown: connections are cut, as on a real restart
        cluster.sql("ALTER DATABASE ehr SET default_transaction_read_only = on")

Several clusters can run at once (each with its own directory and port), e.g. one per institution.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.support.server import free_port

__all__ = ["PG_BIN", "PgCluster", "PgClusterError"]

PG_BIN = Path(os.environ.get("EHR_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"


class PgClusterError(RuntimeError):
    """The cluster could not be created, started or stopped; the message carries the server log."""


@dataclass
class PgCluster:
    directory: Path
    port: int

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    # -- lifecycle -----------------------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str = "pg", port: int | None = None) -> PgCluster:
        """``initdb`` a new cluster (not started) in a fresh directory of its own under the system temp dir.

        Not under pytest's ``tmp_path``: pytest keeps its root 0700 (re-applied by every session), and the
        ``postgres`` user must be able to reach the cluster directory.
        """
        if not (PG_BIN / "initdb").exists():
            raise PgClusterError(f"no PostgreSQL binaries in {PG_BIN} (set EHR_TEST_PG_BIN)")
        directory = Path(tempfile.mkdtemp(prefix=f"ehr-{name}-"))
        cluster = cls(directory, port or free_port())
        if os.geteuid() == 0:
            shutil.chown(directory, OS_USER, OS_USER)
        cluster._run("initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        settings = (
            f"\nlisten_addresses = '127.0.0.1'\nport = {cluster.port}\n"
            f"unix_socket_directories = '{directory}'\nfsync = off\nmax_connections = 100\n"
        )
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(settings)
        return cluster

    @classmethod
    @contextmanager
    def replica_of(cls, primary: PgCluster, name: str = "replica") -> Iterator[PgCluster]:
        """A streaming replica (hot standby) of ``primary``: ``pg_basebackup -R``, started; removed after."""
        directory = Path(tempfile.mkdtemp(prefix=f"ehr-{name}-"))
        replica = cls(directory, free_port())
        if os.geteuid() == 0:
            shutil.chown(directory, OS_USER, OS_USER)
        try:
            replica._run(
                "pg_basebackup", "-D", str(replica.data), "-h", "127.0.0.1", "-p", str(primary.port),
                "-U", "postgres", "-R", "-X", "stream", "--no-sync",
            )  # fmt: skip
            with (replica.data / "postgresql.conf").open("a") as conf:
                conf.write(f"\nport = {replica.port}\nunix_socket_directories = '{directory}'\nhot_standby = on\n")
            replica.start()
            yield replica
        finally:
            replica.stop(mode="immediate", missing_ok=True)
            shutil.rmtree(directory, ignore_errors=True)

    @classmethod
    @contextmanager
    def started(cls, name: str = "pg", port: int | None = None) -> Iterator[PgCluster]:
        """A created and started cluster, stopped (immediately) and removed when the block ends."""
        cluster = cls.create(name, port)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop(mode="immediate", missing_ok=True)
            shutil.rmtree(cluster.directory, ignore_errors=True)

    def start(self, timeout: float = 30.0) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)), "start")
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast", missing_ok: bool = False) -> None:
        """``pg_ctl stop -m fast|immediate|smart``; fast cuts every connection like a service restart."""
        if missing_ok and not (self.data / "postmaster.pid").exists():
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=not missing_ok)

    def restart(self, down_seconds: float = 0.0, mode: str = "fast") -> None:
        """Stop (cutting every connection), stay down ``down_seconds``, start again."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PgClusterError(f"cluster on port {self.port} not ready:\n{self._log_tail()}") from None
                time.sleep(0.1)

    # -- access --------------------------------------------------------------------------------------------

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """The URL of ``dbname`` on this cluster, creating the database the first time."""
        if dbname != "postgres":
            with psycopg.connect(self.conninfo(), autocommit=True) as connection:
                exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
                if exists is None:
                    connection.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement in autocommit (ALTER DATABASE, pg_terminate_backend...); return its rows."""
        with psycopg.connect(self.conninfo(dbname), autocommit=True) as connection:
            cursor = connection.execute(statement)  # type: ignore[arg-type]  # test-owned literal SQL
            return cursor.fetchall() if cursor.description else []

    # -- helpers -------------------------------------------------------------------------------------------

    def _run(self, binary: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(PG_BIN / binary), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", OS_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise PgClusterError(f"{binary} {' '.join(args)} failed:\n{done.stdout}{done.stderr}\n{self._log_tail()}")
        return done

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no server log)"
