"""Figure 3: the floors and ceilings, each doing at least as many operations as its HTTP figure did.

Each runs until it has done that many and ``--baseline-min-seconds`` have passed (a fast baseline timed
over a few hundred milliseconds means little), or ``--seconds`` have passed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.http_figures import HttpRun
from bench.jsonb_table import JsonbTable
from bench.options import Options
from bench.pg import conninfo, fresh_schema
from bench.raw_postgres import COPY_BATCH, RawPostgres
from bench.recorder import RecorderBench, open_recorder
from bench.stats import Measurement

__all__ = ["baselines"]


def _count(run: HttpRun, name: str, concurrency: int, options: Options) -> int:
    figure = run.find(name, concurrency)
    done = figure.operations if figure is not None else 0
    return max(done, options.min_baseline_count)


def baselines(
    run: HttpRun, options: Options, work_dir: Path, topic: str, state: bytes, failures: dict[str, str]
) -> list[Measurement]:
    """Recorder inserts and reads on ``run.backend``; on PostgreSQL also raw INSERT, SELECT and COPY, and the
    plain JSONB table (the "no event sourcing" alternative).

    A family of baselines that fails (PostgreSQL out of connections on a shared machine, say) is named in
    ``failures`` and the others still run: the HTTP figures are then shown with fewer baselines, not lost.
    Each family closes its connections before the next opens its own (32 threads are 32 connections).
    """
    backend = run.backend
    results: list[Measurement] = []
    warmup, seconds, least = options.baseline_warmup, options.seconds, options.baseline_min_seconds

    def both(family: Any) -> None:
        for concurrency in options.concurrency:
            count = _count(run, "http create", concurrency, options)
            results.append(family.inserts(concurrency, seconds, warmup, count, least))
        for concurrency in options.concurrency:
            count = _count(run, "http read", concurrency, options)
            results.append(family.reads(concurrency, seconds, warmup, count, least))

    def attempt(name: str, body: Callable[[], None]) -> None:
        try:
            body()
        except Exception as error:
            failures[f"baseline {backend} {name}"] = f"{type(error).__name__}: {error}"

    with ExitStack() as stack:
        schema = None
        if backend == "postgres":
            schema = stack.enter_context(fresh_schema(options.postgres_url, "bench_base"))

        def recorder() -> None:
            path = work_dir / f"recorder-{backend}"
            url = options.postgres_url if backend == "postgres" else None
            with open_recorder(path, url, schema) as opened:
                both(RecorderBench(opened, backend, topic, state))

        attempt("recorder", recorder)
        if backend == "postgres":
            assert schema is not None
            made: list[RawPostgres] = []

            def psycopg_family() -> None:
                made.append(RawPostgres(conninfo(options.postgres_url), schema, topic, state))
                both(made[0])

            attempt("psycopg", psycopg_family)
            attempt("jsonb table", lambda: both(JsonbTable(conninfo(options.postgres_url), schema)))
            if made:
                most = max(_count(run, "http create", c, options) for c in options.concurrency)
                attempt("COPY", lambda: results.append(made[0].copy(seconds, max(most, 10 * COPY_BATCH), least)))
    return results
