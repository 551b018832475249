"""``python -m bench.audit``: what auditing every read costs (target: reads/s ratio >= 0.8).

Runs the real server twice per round — ``EHR_AUDIT_ENABLED=true`` (the default: every interaction leaves a
committed audit entry before the request completes) and ``false`` — on a fresh store each time, creates
``--patients`` Patients, then reads them at random with ``--concurrency`` clients for ``--seconds``.
Rounds alternate the order (off/on, on/off, ...) so drift on a shared machine hits both alike; the
figure is the median over rounds and the ratio is with/without.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.loadgen import create_load, read_load, run_load
from bench.payload import Credentials, PatientFactory
from bench.pg import DEFAULT_URL, fresh_schema
from bench.server import running_server


def measure(backend: str, audit: bool, args: argparse.Namespace) -> float:
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-audit-")))
        env = {"EHR_AUTH": "disabled-for-development", "EHR_AUDIT_ENABLED": "true" if audit else "false"}
        if backend == "postgres":
            schema = stack.enter_context(fresh_schema(args.postgres_url, "bench_audit"))
            env |= {"EHR_DATABASE_URL": args.postgres_url, "EHR_POSTGRES_SCHEMA": schema}
        credentials = Credentials(None)
        server = stack.enter_context(
            running_server(work / "data", work / "server.log", env, headers=credentials.read())
        )
        creating = create_load(PatientFactory(), credentials)
        run_load(server.base_url, creating, 4, 120.0, 0.0, args.patients)
        if not creating.created:
            raise RuntimeError(f"no create succeeded: {creating.first_error}")
        reads = run_load(
            server.base_url,
            read_load(creating.created, credentials),
            args.concurrency,
            args.seconds,
            args.warmup,
            10**9,
            server.pid,
            with_db=backend == "postgres",
        )
        if reads.errors:
            raise RuntimeError(f"{reads.errors} reads failed")
        return reads.rate


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--postgres-url", default=os.environ.get("EHR_BENCH_POSTGRES_URL", DEFAULT_URL))
    args = parser.parse_args()
    for backend in ("sqlite", "postgres") if args.backend == "both" else (args.backend,):
        rates: dict[bool, list[float]] = {True: [], False: []}
        for number in range(args.rounds):
            for audit in (False, True) if number % 2 == 0 else (True, False):
                rates[audit].append(measure(backend, audit, args))
                print(
                    f"{backend} round {number + 1}: audit {'on ' if audit else 'off'} {rates[audit][-1]:,.0f} reads/s"
                )
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        ratio = on / off if off else float("nan")
        print(
            f"{backend}: reads/s with audit {on:,.0f}, without {off:,.0f}, ratio {ratio:.2f} "
            f"(target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'}; concurrency {args.concurrency}, "
            f"{args.seconds:g} s x {args.rounds} rounds)"
        )


if __name__ == "__main__":
    main()
