"""Figure 3: the floors and ceilings, each doing at least as many operations as its HTTP figure did.

Each runs until it has done that many and ``--baseline-min-seconds`` have passed (a fast baseline timed
over a few hundred milliseconds means little), or ``--seconds`` have passed.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

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


def baselines(run: HttpRun, options: Options, work_dir: Path, topic: str, state: bytes) -> list[Measurement]:
    """Recorder inserts and reads on ``run.backend``; on PostgreSQL also raw INSERT, SELECT and COPY, and the
    plain JSONB table (the "no event sourcing" alternative)."""
    backend = run.backend
    results: list[Measurement] = []
    warmup, seconds, least = options.baseline_warmup, options.seconds, options.baseline_min_seconds
    with ExitStack() as stack:
        if backend == "postgres":
            schema = stack.enter_context(fresh_schema(options.postgres_url, "bench_base"))
            recorder = stack.enter_context(open_recorder(work_dir / "recorder-postgres", options.postgres_url, schema))
        else:
            recorder = stack.enter_context(open_recorder(work_dir / "recorder-sqlite"))
        bare = RecorderBench(recorder, backend, topic, state)
        for concurrency in options.concurrency:
            count = _count(run, "http create", concurrency, options)
            results.append(bare.inserts(concurrency, seconds, warmup, count, least))
        for concurrency in options.concurrency:
            count = _count(run, "http read", concurrency, options)
            results.append(bare.reads(concurrency, seconds, warmup, count, least))
        if backend == "postgres":
            raw = RawPostgres(conninfo(options.postgres_url), schema, topic, state)
            for concurrency in options.concurrency:
                count = _count(run, "http create", concurrency, options)
                results.append(raw.inserts(concurrency, seconds, warmup, count, least))
            for concurrency in options.concurrency:
                count = _count(run, "http read", concurrency, options)
                results.append(raw.reads(concurrency, seconds, warmup, count, least))
            plain = JsonbTable(conninfo(options.postgres_url), schema)
            for concurrency in options.concurrency:
                count = _count(run, "http create", concurrency, options)
                results.append(plain.inserts(concurrency, seconds, warmup, count, least))
            for concurrency in options.concurrency:
                count = _count(run, "http read", concurrency, options)
                results.append(plain.reads(concurrency, seconds, warmup, count, least))
            most = max(_count(run, "http create", c, options) for c in options.concurrency)
            results.append(raw.copy(seconds, max(most, 10 * COPY_BATCH), least))
    return results
