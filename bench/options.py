"""Command-line options of ``python -m bench``."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.loadgen import LOOPBACK
from bench.pg import DEFAULT_URL

__all__ = ["SECTIONS", "Options", "parse_options"]

#: http: creates and reads (raw client and wrk) with the server's RSS; import: `ehr import` of the Synthea
#: corpus at two sizes with its RSS; rebuild: every projection from zero; everything, search: read latencies;
#: federation: write throughput with one, two and three institution stores.
SECTIONS = ("http", "import", "rebuild", "everything", "search", "federation")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Options:
    backends: tuple[str, ...]
    concurrency: tuple[int, ...]
    seconds: float
    warmup: float
    max_requests: int
    min_baseline_count: int
    baseline_min_seconds: float
    postgres_url: str
    results: Path
    profile: bool
    quick: bool
    client: str
    auth: str
    wrk: bool
    server_workers: int
    pool_size: int | None
    projection: str
    sections: tuple[str, ...]
    search_resources: int
    requests: int
    federation_clients: int = 24
    #: Interleaved windows a side of the reads with and without the audit log (odd, at least 3).
    audit_windows: int = 3
    #: Peer mode: the base URL of another FHIR R4 server on this machine, and its bearer token.
    peer: str | None = None
    peer_token: str | None = None

    @property
    def baseline_warmup(self) -> float:
        """Baselines have no server to warm: a short warm-up fills pools and caches."""
        return min(self.warmup, 0.5 if self.quick else 1.0)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Every figure the project promises beside its baselines from the same run, as ratios, "
        "with the target and whether it is met.",
    )
    parser.add_argument(
        "--backends",
        default="postgres",
        help="comma list of sqlite, postgres for the HTTP figures (default postgres: the targets are stated for it; "
        "import, rebuild, $everything and search always run on PostgreSQL)",
    )
    parser.add_argument("--concurrency", default="1,8,32", help="concurrent clients, comma list (default 1,8,32)")
    parser.add_argument(
        "--sections",
        default=None,
        help=f"what to run, comma list of {', '.join(SECTIONS)} (default all)",
    )
    parser.add_argument(
        "--server-workers", type=int, default=1, help="API server processes (uvicorn workers; PostgreSQL only)"
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="EHR_POSTGRES_POOL_SIZE of the server and worker processes (default: the server's own); with "
        "several server processes, lower it to stay under PostgreSQL's max_connections",
    )
    parser.add_argument(
        "--projection",
        choices=("auto", "inline", "worker"),
        default="auto",
        help="auto (default, the README's): on PostgreSQL the server starts its own projection worker; inline: "
        "EHR_PROJECTION=inline, the server process projects; worker: EHR_PROJECTION=worker and an `ehr project` "
        "process started by the benchmark",
    )
    parser.add_argument("--no-wrk", dest="wrk", action="store_false", help="do not run wrk beside the raw client")
    parser.add_argument(
        "--search-resources",
        type=int,
        default=None,
        help="resources generated for the search figures (default 50,000; 10,000 quick). "
        "The 1M run is `python -m bench.search`",
    )
    parser.add_argument(
        "--requests", type=int, default=None, help="measured requests per $everything and search figure (100; 30 quick)"
    )
    parser.add_argument(
        "--federation-clients",
        type=int,
        default=24,
        help="federation section: raw clients in all, split evenly over the institutions' servers (default 24)",
    )
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per figure (default 10; 3 quick)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each figure (2; 1 quick)")
    parser.add_argument(
        "--audit-windows",
        type=int,
        default=3,
        help="windows a side, interleaved, of the reads with and without the audit log (odd, at least 3; default 3)",
    )
    parser.add_argument("--max-requests", type=int, default=100_000, help="count bound per figure")
    parser.add_argument(
        "--min-baseline-count",
        type=int,
        default=1000,
        help="baselines do as many operations as the HTTP figure, but at least this many",
    )
    parser.add_argument(
        "--baseline-min-seconds",
        type=float,
        default=None,
        help="baselines keep going at least this long, past the HTTP figure's count (default 2; 1 quick)",
    )
    parser.add_argument("--postgres-url", default=os.environ.get("EHR_BENCH_POSTGRES_URL", DEFAULT_URL))
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON result goes")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the server under a stack sampler; writes results/profile-<backend>-<time>/<figure>-c<n>.txt",
    )
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load client: raw asyncio HTTP/1.1 (default, ~60 us CPU a request) or httpx (~1 ms a request)",
    )
    parser.add_argument(
        "--auth",
        choices=("token", "disabled"),
        default="token",
        help="token: a bearer token from `ehr token` on every request (default, as in production); "
        "disabled: EHR_AUTH=disabled-for-development and X-EHR-* headers",
    )
    parser.add_argument("--quick", action="store_true", help="short run: 3 s per figure, 1 s warm-up")
    parser.add_argument(
        "--peer",
        default=None,
        metavar="URL",
        help="base URL of another FHIR R4 server on this machine (loopback): the same HTTP workloads run against "
        "it, after seeding it through its own API, and ehr-core's figures are shown beside its (default "
        "sections: http)",
    )
    parser.add_argument("--peer-token", default=None, metavar="TOKEN", help="bearer token the peer requires")
    args = parser.parse_args(argv)
    if args.peer is not None:
        try:
            peer_host = urlsplit(args.peer).hostname
        except ValueError:
            peer_host = None
        if peer_host not in LOOPBACK or not args.peer.startswith("http://"):
            parser.error(f"--peer must be http:// on this machine ({', '.join(LOOPBACK)}), not {args.peer}")
        if args.sections is None:
            args.sections = "http"
    sections = _csv(args.sections or ",".join(SECTIONS))
    if set(sections) - set(SECTIONS):
        parser.error(f"unknown section(s): {', '.join(sorted(set(sections) - set(SECTIONS)))}")
    backends = _csv(args.backends)
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    try:
        concurrency = tuple(int(part) for part in _csv(args.concurrency))
    except ValueError:
        parser.error("--concurrency needs positive integers")
    if not concurrency or min(concurrency) < 1:
        parser.error("--concurrency needs positive integers")
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    return Options(
        backends=backends,
        concurrency=concurrency,
        seconds=seconds,
        warmup=warmup,
        max_requests=args.max_requests,
        audit_windows=args.audit_windows,
        min_baseline_count=args.min_baseline_count,
        baseline_min_seconds=(
            args.baseline_min_seconds if args.baseline_min_seconds is not None else (1.0 if args.quick else 2.0)
        ),
        postgres_url=args.postgres_url,
        results=args.results,
        profile=args.profile,
        quick=args.quick,
        client=args.client,
        auth=args.auth,
        wrk=args.wrk,
        server_workers=args.server_workers,
        pool_size=args.pool_size,
        projection=args.projection,
        sections=sections,
        search_resources=args.search_resources or (10_000 if args.quick else 50_000),
        requests=args.requests or (30 if args.quick else 100),
        federation_clients=args.federation_clients,
        peer=args.peer.rstrip("/") if args.peer else None,
        peer_token=args.peer_token,
    )
