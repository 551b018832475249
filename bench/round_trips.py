"""``python -m bench.round_trips``: database work and server CPU per request, figures that contention
cannot move.

Throughput on a shared machine says as much about the neighbours as about the server. What a request
costs does not: how many statements it sends, how many round trips it waits for, how many transactions
it commits, and how much CPU the server spends on it. This measures those for the interactions the
HTTP targets name — create Patient, read Patient by id, search ``Patient?family=X&_count=20``, and the
consultation transaction Bundle of 15 resources (``bench.workloads.consultation``, per Bundle) — on
PostgreSQL and SQLite, with the README's default configuration (authentication, audit entry per
access, encryption at rest, ledger, access policy, master patient index all on), in-process:

- ``statements``: statements sent (``executemany`` counts each row's statement; ``COPY`` counts one);
- ``round trips`` (PostgreSQL): how many times a connection waits for the server's answer (BEGIN and
  COMMIT included; a pipeline's statements answered together count once);
- ``commits``: COMMITs (PostgreSQL: the command; SQLite: the statement, from the trace callback);
- ``CPU ms``: process CPU time minus the client thread's (the app runs in the test client's portal
  thread and anyio's worker threads, the group commit in the request that leads it: all of it is the
  server's); ``path``: without the background threads' (audit writer, ledger sealer, log followers,
  subscription matching and delivery: they batch many requests, and the sealer also works on a timer),
  from /proc/self/task.

Every figure comes as ``path`` (statements, round trips, commits made on the request's own threads: the
same for every run) and ``all`` (with the background threads' share, which depends on how requests
batch, so on timing).

Every request of a window is sent, then the counters settle (the audit entries of reads commit after the
response), then they are divided by the number of requests. One client sends them one after another:
the figures are the cost of a request, not of a load. ``--baseline COMMIT`` measures ``git archive
COMMIT`` first, in a process of its own, and prints the ratios; ``--statements`` lists each window's
statements and where its round trips wait (stderr); ``--profile`` prints cProfile's top functions
(CPU time, every server thread started after the server's creation).

Usage: ``python -m bench.round_trips [--backends postgres,sqlite] [--requests 200] [--warmup 40]
[--interactions create,read,search,transaction] [--baseline main] [--statements] [--profile]``
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.waiting import Ready, Wait

from bench.payload import TOKEN_CLAIMS, PatientFactory
from bench.workloads import CONSULTATION_RESOURCES, consultation

__all__ = ["Counters", "count_waits", "main"]

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


class Counters:
    """Process-wide counts of what reaches the database, from every thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statements = 0
        self.round_trips = 0
        self.commits = 0
        #: The same counts made by the background threads (audit writer, ledger sealer, log followers):
        #: batched, so their share per request depends on timing, unlike the request path's.
        self.background = [0, 0, 0]
        self.texts: collections.Counter[str] | None = None

    def text(self, query: Any, times: int = 1) -> None:
        if self.texts is not None:
            if not isinstance(query, str | bytes):
                query = query.as_string(None) if hasattr(query, "as_string") else repr(query)
            if isinstance(query, bytes):
                query = query.decode(errors="replace")
            with self.lock:
                self.texts[" ".join(query.split())[:150]] += times

    def add(self, statements: int = 0, round_trips: int = 0, commits: int = 0) -> None:
        if type(threading.current_thread()).__name__ in BACKGROUND_THREADS:
            with self.lock:
                self.background[0] += statements
                self.background[1] += round_trips
                self.background[2] += commits
        with self.lock:
            self.statements += statements
            self.round_trips += round_trips
            self.commits += commits

    def snapshot(self) -> tuple[int, int, int, int, int, int]:
        with self.lock:
            return self.statements, self.round_trips, self.commits, *self.background  # type: ignore[return-value]


#: Threads that work for many requests at once (class names: ehr_core.audit, projections.ledger,
#: projections.follower, projections.positions, the subscriptions' matcher and delivery thread of
#: fhir_api.subscriptions, and the views' ANALYZE of projections.statistics, which no request waits for).
BACKGROUND_THREADS = frozenset(
    {"AuditWriter", "LedgerSealer", "LogFollower", "PositionWatcher", "Deliverer", "StatisticsAnalyser"}
)


COUNTERS = Counters()
PROFILERS: list[cProfile.Profile] = []


def _profile_threads() -> None:
    """Profile every thread started from now on (the server's), each with a cProfile of its own."""

    def start(*_: Any) -> None:
        profiler = cProfile.Profile(time.thread_time)
        PROFILERS.append(profiler)
        profiler.enable()

    threading.setprofile(start)


def _where() -> str:
    frame = sys._getframe(3)
    names = []
    while frame is not None and len(names) < 9:
        names.append(f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}")
        frame = frame.f_back
    return " < ".join(names)


def count_waits(gen: Any, round_trip: Callable[[], None]) -> Any:
    """``gen`` (a psycopg generator: it yields what to wait for on the socket), calling ``round_trip`` once per
    round trip: each time it starts waiting to read after having written (a result arriving in several
    pieces, or a pipeline's sends that only wait to be writable, count no more). A pipeline waits to read
    and write at once while it sends: when its answers all arrive during those waits (a quick server), it
    never waits to read alone, and its one round trip is counted when it ends. The tests' round-trip
    bounds (tests/support/round_trips.py) count with this too, so they mean what these figures mean."""
    reading = False
    counted = False
    answered = False  # something arrived while waiting to read and write at once
    try:
        state = next(gen)
        while True:
            if state == Wait.R:
                if not reading:
                    round_trip()
                    counted = True
                reading = True
            else:
                reading = False
            ready = yield state
            if state == Wait.RW and ready & Ready.R:
                answered = True
            state = gen.send(ready)
    except StopIteration as stop:
        if answered and not counted:
            round_trip()
        return stop.value


def _round_trip() -> None:
    COUNTERS.add(round_trips=1)
    if COUNTERS.texts is not None:
        COUNTERS.text("(round trip) " + _where())


def _install() -> None:
    """Wrap psycopg's cursor and connection methods and sqlite3's connect so every thread is counted."""
    from psycopg import _connection_base

    cursor_execute = psycopg.Cursor.execute
    cursor_executemany = psycopg.Cursor.executemany
    cursor_copy = psycopg.Cursor.copy
    connection_wait = psycopg.Connection.wait
    exec_command = _connection_base.BaseConnection._exec_command

    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        query = args[0] if args else kwargs.get("query")
        text = query if isinstance(query, str) else query.as_string(None) if hasattr(query, "as_string") else ""
        COUNTERS.add(statements=1, commits=1 if str(text).strip().upper() == "COMMIT" else 0)
        COUNTERS.text(args[0] if args else kwargs.get("query"))
        return cursor_execute(self, *args, **kwargs)

    def executemany(self: Any, query: Any, params_seq: Any, *args: Any, **kwargs: Any) -> Any:
        rows = list(params_seq)
        COUNTERS.add(statements=len(rows))
        COUNTERS.text(query, len(rows))
        return cursor_executemany(self, query, rows, *args, **kwargs)

    def copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTERS.add(statements=1)
        COUNTERS.text(args[0] if args else kwargs.get("statement"))
        return cursor_copy(self, *args, **kwargs)

    def wait(self: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
        return connection_wait(self, count_waits(gen, _round_trip), *args, **kwargs)

    def command(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        text = bytes(command) if isinstance(command, bytes | bytearray) else str(command).encode()
        if text.strip().upper().startswith(b"COMMIT"):
            COUNTERS.add(commits=1)
        COUNTERS.text(b"(command) " + text)
        return exec_command(self, command, *args, **kwargs)

    psycopg.Cursor.execute = execute  # type: ignore[method-assign,assignment]
    psycopg.Cursor.executemany = executemany  # type: ignore[method-assign]
    psycopg.Cursor.copy = copy  # type: ignore[method-assign]
    psycopg.Connection.wait = wait  # type: ignore[method-assign]
    _connection_base.BaseConnection._exec_command = command  # type: ignore[method-assign]

    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)

        def trace(statement: str) -> None:
            head = statement.lstrip()[:6].upper()
            COUNTERS.add(statements=1, commits=1 if head == "COMMIT" else 0)
            COUNTERS.text(statement)

        connection.set_trace_callback(trace)
        return connection

    sqlite3.connect = traced  # type: ignore[assignment]


@dataclass
class Figure:
    backend: str
    interaction: str
    requests: int
    statements: float
    round_trips: float
    commits: float
    #: Of those, the ones made on the request's own path (not by the background threads).
    request_statements: float
    request_round_trips: float
    request_commits: float
    cpu_ms: float
    #: Server CPU without the background threads' (which also work on timers: a slower window seals
    #: more ledger blocks).
    request_cpu_ms: float
    wall_ms: float


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _background_cpu() -> float:
    """CPU seconds the background threads (:data:`BACKGROUND_THREADS`) used so far, from /proc (Linux)."""
    ids = {t.native_id for t in threading.enumerate() if type(t).__name__ in BACKGROUND_THREADS}
    total = 0
    for native_id in ids:
        try:
            fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def _settle(timeout: float = 5.0) -> None:
    """Wait until nothing reaches the database for a while: the audit entries of the window committed."""
    deadline = time.monotonic() + timeout
    last = COUNTERS.snapshot()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = COUNTERS.snapshot()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since > 0.3:
            return


def _window(
    backend: str, interaction: str, count: int, send: Callable[[int], None], profile: bool, statements: bool = False
) -> Figure:
    _settle()
    if statements:
        COUNTERS.texts = collections.Counter()
    before = COUNTERS.snapshot()
    cpu0, client0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
    background0 = _background_cpu()
    if profile:
        for profiler in PROFILERS:
            profiler.clear()
    for i in range(count):
        send(i)
    wall = time.perf_counter() - wall0
    client = time.thread_time() - client0
    _settle()
    cpu = time.process_time() - cpu0
    background = _background_cpu() - background0
    after = COUNTERS.snapshot()
    if statements and COUNTERS.texts is not None:
        print(f"--- statements, {backend} {interaction}, per request", file=sys.stderr)
        for text, times in COUNTERS.texts.most_common():
            print(f"{times / count:7.2f}  {text}", file=sys.stderr)
        COUNTERS.texts = None
    if profile:
        out = io.StringIO()
        stats = pstats.Stats(stream=out)
        for profiler in list(PROFILERS):
            profiler.create_stats()
            if profiler.stats:  # type: ignore[attr-defined]
                stats.add(profiler)
        # BENCH_PROFILE_SORT=cumulative BENCH_PROFILE_ONLY='ehr_core|projections|fhir_api' gives the budget's
        # view: the project's own functions by time spent in them and below (bench/README.md);
        # BENCH_PROFILE_LINES how many (45).
        order = os.environ.get("BENCH_PROFILE_SORT", "tottime")
        lines = int(os.environ.get("BENCH_PROFILE_LINES", "45"))
        stats.sort_stats(order).print_stats(os.environ.get("BENCH_PROFILE_ONLY", ""), lines)
        print(f"--- cProfile, {backend} {interaction}, every thread but the client's, by {order}", file=sys.stderr)
        print(out.getvalue(), file=sys.stderr)
    statements, round_trips, commits, bg_statements, bg_round_trips, bg_commits = (
        b - a for a, b in zip(before, after, strict=True)
    )
    return Figure(
        backend=backend,
        interaction=interaction,
        requests=count,
        statements=statements / count,
        round_trips=round_trips / count,
        commits=commits / count,
        request_statements=(statements - bg_statements) / count,
        request_round_trips=(round_trips - bg_round_trips) / count,
        request_commits=(commits - bg_commits) / count,
        cpu_ms=(cpu - client) * 1000 / count,
        request_cpu_ms=(cpu - client - background) * 1000 / count,
        wall_ms=wall * 1000 / count,
    )


@contextmanager
def _server(backend: str, url: str, data_dir: Path) -> Iterator[tuple[Any, Any]]:
    from fastapi.testclient import TestClient

    from ehr_core.settings import Settings
    from fhir_api.app import create_app
    from fhir_api.services import Services

    schema = None
    if backend == "sqlite":
        settings = Settings(data_dir=data_dir, auth="required")
    else:
        schema = f"bench_rt_{uuid.uuid4().hex[:10]}"
        settings = Settings(database_url=url, postgres_schema=schema, data_dir=data_dir, auth="required")
    services = Services.open(settings)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client, settings
    finally:
        services.close()
        if schema is not None:
            with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
                connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


#: What ``--interactions`` chooses from, in the order measured.
INTERACTIONS = ("create", "read", "search", "transaction")


def measure(
    backend: str,
    url: str,
    requests: int,
    warmup: int,
    profile: bool,
    statements: bool = False,
    interactions: tuple[str, ...] = INTERACTIONS,
) -> list[Figure]:
    from fhir_api.auth import mint_development_token

    with tempfile.TemporaryDirectory() as tmp, _server(backend, url, Path(tmp) / "ehr-data") as (client, settings):
        token = mint_development_token(settings, dict(TOKEN_CLAIMS))
        who = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
        write = {**who, "Content-Type": "application/fhir+json"}
        factory = PatientFactory()
        ids: list[str] = []
        families: list[str] = []

        def create(_: int) -> None:
            body = factory()
            response = client.post("/fhir/Patient", content=body, headers={**write, "X-Request-ID": uuid.uuid4().hex})
            if response.status_code != 201:
                raise RuntimeError(f"create answered {response.status_code}: {response.text[:500]}")
            ids.append(response.json()["id"])
            families.append(orjson.loads(body)["name"][0]["family"].split()[0])

        def read(i: int) -> None:
            response = client.get(f"/fhir/Patient/{ids[i % len(ids)]}", headers=who)
            if response.status_code != 200:
                raise RuntimeError(f"read answered {response.status_code}: {response.text[:500]}")

        def transaction(i: int) -> None:
            # R4 §3.1.0.11: one consultation (15 resources, 14 pointing at the Encounter by urn:uuid), as the
            # http section's transaction load sends it (bench/workloads.py).
            body = consultation(ids[i % len(ids)])
            response = client.post("/fhir", content=body, headers={**write, "X-Request-ID": uuid.uuid4().hex})
            if response.status_code != 200:
                raise RuntimeError(f"transaction answered {response.status_code}: {response.text[:500]}")

        def search(i: int) -> None:
            family = families[i % len(families)]
            response = client.get(f"/fhir/Patient?family={family}&_count=20", headers=who)
            if response.status_code != 200:
                raise RuntimeError(f"search answered {response.status_code}: {response.text[:500]}")

        for i in range(warmup):
            create(i)
        for i in range(warmup):
            read(i)
            search(i)
            if "transaction" in interactions:
                transaction(i)
        windows = {
            "create": ("create Patient", create),
            "read": ("read Patient/{id}", read),
            "search": ("search Patient?family=X&_count=20", search),
            "transaction": (f"transaction ({CONSULTATION_RESOURCES} res)", transaction),
        }
        return [
            _window(backend, windows[name][0], requests, windows[name][1], profile, statements) for name in interactions
        ]


#: Columns: title, width, the figure's value, whether only PostgreSQL has it.
_COLUMNS: list[tuple[str, int, Callable[[Figure], float], bool]] = [
    ("path stmts", 10, lambda f: f.request_statements, False),
    ("path trips", 10, lambda f: f.request_round_trips, True),
    ("path commits", 12, lambda f: f.request_commits, False),
    ("all stmts", 9, lambda f: f.statements, False),
    ("all trips", 9, lambda f: f.round_trips, True),
    ("all commits", 11, lambda f: f.commits, False),
    ("path CPU ms", 11, lambda f: f.request_cpu_ms, False),
    ("all CPU ms", 10, lambda f: f.cpu_ms, False),
    ("wall ms", 8, lambda f: f.wall_ms, False),
]


def render(figures: list[Figure], baseline: list[Figure] | None = None, label: str = "baseline") -> str:
    """One row per figure, per request; with a ``baseline`` (same run), its row below each and the ratios
    (this ÷ baseline). ``path``: on the request's own path; ``all``: with the background threads' share."""
    label = label[:10]
    head = f"{'backend':8} {'interaction':34} {'code':10} {'n':>4} " + " ".join(f"{t:>{w}}" for t, w, _, _ in _COLUMNS)
    lines = [head]
    old = {(f.backend, f.interaction): f for f in baseline or []}

    Get = Callable[[Figure], float]

    def cells(f: Figure, text: Callable[[Figure, Get, bool], str]) -> str:
        return " ".join(f"{text(f, get, pg_only):>{w}}" for _, w, get, pg_only in _COLUMNS)

    def value(f: Figure, get: Get, pg_only: bool) -> str:
        return "-" if pg_only and f.backend != "postgres" else f"{get(f):.2f}"

    for f in figures:
        lines.append(f"{f.backend:8} {f.interaction:34} {'this':10} {f.requests:4d} " + cells(f, value))
        b = old.get((f.backend, f.interaction))
        if b is None:
            continue
        lines.append(f"{b.backend:8} {b.interaction:34} {label:10} {b.requests:4d} " + cells(b, value))

        def ratio(f: Figure, get: Get, pg_only: bool, b: Figure = b) -> str:
            if (pg_only and f.backend != "postgres") or not get(b):
                return "-"
            return f"{get(f) / get(b):.2f}"

        lines.append(f"{'':8} {'ratio this / ' + label:34} {'':10} {'':4} " + cells(f, ratio))
    return "\n".join(lines)


def _baseline(commit: str, argv: list[str]) -> list[Figure]:
    """The same measurement of ``commit``'s code (``git archive`` into a temporary directory), in a process
    of its own, with this module's counters: the baseline of the same run, on the same machine."""
    project = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", commit], cwd=project, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        (Path(tmp) / "bench" / "round_trips.py").write_text(Path(__file__).read_text())
        out = Path(tmp) / "figures.json"
        env = {**os.environ, "PYTHONPATH": tmp}
        command = [sys.executable, "-m", "bench.round_trips", *argv, "--json", str(out)]
        subprocess.run(command, cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
        return [Figure(**item) for item in orjson.loads(out.read_bytes())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.round_trips", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--postgres-url", default=DEFAULT_URL)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--statements", action="store_true", help="print each window's statements (stderr)")
    parser.add_argument(
        "--interactions",
        default=",".join(INTERACTIONS),
        help=f"which to measure, comma-separated among {','.join(INTERACTIONS)} (creates always run as the warm-up)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--baseline", metavar="COMMIT", help="also measure COMMIT's code (e.g. main) first, and print the ratios"
    )
    options = parser.parse_args(argv)
    baseline: list[Figure] | None = None
    if options.baseline:
        shared = ["--backends", options.backends, "--requests", str(options.requests), "--warmup", str(options.warmup)]
        shared += ["--interactions", options.interactions]
        baseline = _baseline(options.baseline, [*shared, "--postgres-url", options.postgres_url])
    _install()
    if options.profile:
        _profile_threads()
    interactions = tuple(name.strip() for name in options.interactions.split(",") if name.strip())
    unknown = set(interactions) - set(INTERACTIONS)
    if unknown:
        parser.error(f"unknown interactions: {', '.join(sorted(unknown))} (choose among {', '.join(INTERACTIONS)})")
    figures: list[Figure] = []
    for backend in options.backends.split(","):
        figures += measure(
            backend.strip(),
            options.postgres_url,
            options.requests,
            options.warmup,
            options.profile,
            options.statements,
            interactions,
        )
    print(render(figures, baseline, options.baseline or "baseline"))
    if options.json is not None:
        options.json.write_bytes(orjson.dumps([f.__dict__ for f in figures], option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
