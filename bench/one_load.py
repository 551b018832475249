"""One load against a fresh server, for comparing two trees back to back and for profiling one interaction.

``python -m bench`` runs every figure; this runs one of them (reads by id, the ``Patient?family`` search,
creates or consultation-sized transactions) at one concurrency against a server of the README's default
configuration (auth on, audit on, PostgreSQL with its projection worker, or SQLite), and prints its rate and
the server process's CPU per request. With ``--py-spy FILE`` it also records the server's interpreter-lock
holders during the measured window (``py-spy record --gil --format raw``: py-spy is not a dependency; give
its path with ``--py-spy-bin``), the profile bench/README.md's "event loop's share" was read from; with
``--py-spy-threads``, every thread's stacks while it runs (what the request threads and the audit writer
cost beside the event loop).

    .venv/bin/python -m bench.one_load read                      # 400 Patients, then 10 s of reads at 32 clients
    .venv/bin/python -m bench.one_load search --backend sqlite
    .venv/bin/python -m bench.one_load create --py-spy /tmp/create.raw
    .venv/bin/python -m bench.one_load transaction --py-spy /tmp/tx.raw --py-spy-threads
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psycopg

from bench.loadgen import Load, create_load, read_load, run_load
from bench.payload import TOKEN_CLAIMS, Credentials, PatientFactory
from bench.pg import DEFAULT_URL, conninfo, fresh_schema
from bench.server import issue_token, running_server
from bench.workloads import CONSULTATION_RESOURCES, search_load, transaction_load

__all__ = ["main"]


def _load(kind: str, created: list[str], credentials: Credentials) -> Load:
    if kind == "read":
        return read_load(created, credentials)
    if kind == "search":
        return search_load(credentials)
    if kind == "transaction":
        return transaction_load(created, credentials)
    return create_load(PatientFactory(), credentials)


def _checkpoint(url: str) -> None:
    """Write out what earlier runs and the seeding left dirty before the window opens, so that no window
    pays for a previous run's checkpoint (runs back to back still vary: compare medians of alternating runs)."""
    with psycopg.connect(conninfo(url), autocommit=True) as connection:
        connection.execute("CHECKPOINT")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.one_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("interaction", choices=("read", "search", "create", "transaction"))
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--postgres-url", default=DEFAULT_URL)
    parser.add_argument("--patients", type=int, default=400, help="Patients created first (8 clients)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds, after 2 s of warm-up")
    parser.add_argument("--py-spy", type=Path, default=None, help="record the server's GIL holders to this file")
    parser.add_argument("--py-spy-bin", default="py-spy")
    parser.add_argument(
        "--py-spy-threads",
        action="store_true",
        help="record every thread's stacks while it runs (what each costs), not only the lock holder's",
    )
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ehr-one-load-"))) / "data"
        env = {"EHR_AUTH": "required"}
        if args.backend == "postgres":
            schema = stack.enter_context(fresh_schema(args.postgres_url, "bench_one"))
            env |= {"EHR_DATABASE_URL": args.postgres_url, "EHR_POSTGRES_SCHEMA": schema}
        credentials = Credentials(issue_token(data, TOKEN_CLAIMS))
        log = data.parent / "server.log"
        server = stack.enter_context(running_server(data, log, env, headers=credentials.read()))
        seeding = create_load(PatientFactory(), credentials)
        run_load(server.base_url, seeding, 8, 60.0, 0.0, args.patients)
        if not seeding.created:
            print(f"no Patient was created: {seeding.first_error}; server log: {log}", file=sys.stderr)
            return 1
        if args.backend == "postgres":
            _checkpoint(args.postgres_url)
        load = _load(args.interaction, seeding.created, credentials)
        run_load(server.base_url, load, args.concurrency, 2.0, 0.0, 10**9)  # warm-up
        spy = None
        if args.py_spy is not None:
            # Every thread's stacks are read without pausing the server: paused 200 times a second with its 40
            # request threads, it answered a fifth of its transactions (15/s against 70/s).
            mode = ["--nonblocking"] if args.py_spy_threads else ["--gil"]
            command = [args.py_spy_bin, "record", *mode, "--format", "raw"]
            command += ["-r", "200"]
            command += ["-d", str(int(args.seconds)), "-o", str(args.py_spy), "-p", str(server.pid)]
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached before the window opens
        measured = run_load(server.base_url, load, args.concurrency, args.seconds, 0.0, 10**9, server.pid)
        if spy is not None:
            spy.wait()

        def per_request(name: str) -> str:
            return f"{1000 * measured.cpu.get(name, float('nan')) / max(measured.operations, 1):.2f} ms"

        database = f", PostgreSQL's CPU {per_request('db')}" if args.backend == "postgres" else ""
        resources = (
            f" ({measured.rate * CONSULTATION_RESOURCES:,.0f} resources/s)" if args.interaction == "transaction" else ""
        )
        print(
            f"{args.backend} {args.interaction} c={args.concurrency}: {measured.rate:,.0f}/s{resources}, "
            f"p99 {measured.p99_ms:,.0f} ms, errors {measured.errors}; per request the server's CPU "
            f"{per_request('server')}{database}"
        )
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
