"""The HTTP load: ``concurrency`` clients, each sending its next request when the last one is answered.

Bounded in time and in count; a warm-up of the same shape runs first and is not counted. Traffic goes
only to this machine (:data:`LOOPBACK`). Two clients: ``raw`` (default, :mod:`bench.rawhttp`, one
keep-alive connection per concurrent client) and ``httpx`` (one ``AsyncClient`` whose pool holds
``concurrency`` connections, ``trust_env=False`` so no proxy from the environment applies).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from bench.payload import Credentials, PatientFactory
from bench.rawhttp import RawConnection
from bench.stats import CpuClock, Measurement, Pids

__all__ = ["CLIENTS", "LOOPBACK", "Load", "create_load", "read_load", "run_load", "run_spread_load"]

CLIENTS = ("raw", "httpx")
#: The load goes to this machine only: ehr-core's server, or a peer started beside it (``--peer``).
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Reply(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


class Session(Protocol):
    """What a load needs from a client: ``httpx.AsyncClient`` and :class:`RawConnection` both fit."""

    def get(self, url: str, *, headers: dict[str, str]) -> Awaitable[Any]: ...
    def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> Awaitable[Any]: ...


@dataclass
class Load:
    """One kind of request; ``on_ok`` sees each counted successful reply."""

    name: str
    send: Callable[[Session], Awaitable[Reply]]
    ok_status: int
    on_ok: Callable[[Reply], None] | None = None
    created: list[str] = field(default_factory=list)
    first_error: str | None = None


def create_load(patients: PatientFactory, credentials: Credentials) -> Load:
    """``POST /fhir/Patient``, a new person each time; the ids the server assigned are kept for the read load."""

    def send(session: Session) -> Awaitable[Reply]:
        return session.post("/Patient", content=patients(), headers=credentials.create())

    load = Load("create", send, 201)

    def remember(reply: Reply) -> None:
        # Location: [base]/Patient/{id}/_history/1 (R4 §3.1.0.4.1; a peer may leave out the version)
        load.created.append(reply.headers["location"].split("Patient/", 1)[1].split("/", 1)[0])

    load.on_ok = remember
    return load


def read_load(ids: list[str], credentials: Credentials, seed: int = 7) -> Load:
    """``GET /fhir/Patient/{id}`` over ids chosen uniformly at random from ``ids``."""
    if not ids:
        raise ValueError("no ids to read")
    chooser = random.Random(seed)
    headers = credentials.read()
    return Load("read", lambda session: session.get(f"/Patient/{chooser.choice(ids)}", headers=headers), 200)


@asynccontextmanager
async def _sessions(client: str, base_url: str, concurrency: int) -> AsyncIterator[list[Session]]:
    """One session per concurrent client (httpx: the same pooled client for all)."""
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0, trust_env=False) as shared:
            yield [shared] * concurrency
        return
    connections = [RawConnection(base_url) for _ in range(concurrency)]
    try:
        yield list(connections)
    finally:
        for connection in connections:
            await connection.close()


async def _phase(
    sessions: list[Session], load: Load, seconds: float, max_count: int, record: bool
) -> tuple[int, int, list[float], float]:
    """Run the load; unexpected answers are counted, and the first one is kept in ``load.first_error``."""
    latencies: list[float] = []
    issued = 0
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: Session) -> None:
        nonlocal issued, errors
        while issued < max_count and time.perf_counter() < deadline:
            issued += 1
            began = time.perf_counter()
            reply = await load.send(session)
            took = time.perf_counter() - began
            if reply.status_code != load.ok_status:
                errors += 1
                if load.first_error is None:
                    body = getattr(reply, "content", b"")[:500]
                    load.first_error = f"{reply.status_code} {body.decode('utf-8', 'replace')}"
                continue
            if record:
                latencies.append(took)
                if load.on_ok is not None:
                    load.on_ok(reply)

    began = time.perf_counter()
    await asyncio.gather(*(worker(session) for session in sessions))
    return issued, errors, latencies, time.perf_counter() - began


async def _run(
    client: str,
    base_url: str,
    load: Load,
    concurrency: int,
    seconds: float,
    warmup: float,
    max_count: int,
    server_pid: Pids,
    with_db: bool,
    mark: Callable[[], None] | None,
) -> Measurement:
    if urlsplit(base_url).hostname not in LOOPBACK:
        raise ValueError(f"the load only goes to this machine, not {base_url}")
    async with _sessions(client, base_url, concurrency) as sessions:
        if warmup > 0:
            await _phase(sessions, load, warmup, max_count, record=False)
        clock = CpuClock(server_pid, with_db)
        if mark is not None:
            mark()
        clock.start()
        issued, errors, latencies, elapsed = await _phase(sessions, load, seconds, max_count, record=True)
        cpu = clock.stop()
        if mark is not None:
            mark()
    return Measurement(
        name=f"http {load.name}",
        backend="",
        concurrency=concurrency,
        operations=len(latencies),
        seconds=elapsed,
        errors=errors,
        latencies=latencies,
        cpu=cpu,
        notes={"issued": issued, "client": client, "first_error": load.first_error},
    )


def run_load(
    base_url: str,
    load: Load,
    concurrency: int,
    seconds: float,
    warmup: float,
    max_count: int,
    server_pid: Pids = None,
    with_db: bool = True,
    client: str = "raw",
    mark: Callable[[], None] | None = None,
) -> Measurement:
    """Warm up for ``warmup`` s, then measure for at most ``seconds`` s or ``max_count`` requests.

    ``mark`` is called right before and right after the measured window (the profiler's segments).
    """
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}")
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop  # the client's own overhead shares the cores with the server: keep it small

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(
            _run(client, base_url, load, concurrency, seconds, warmup, max_count, server_pid, with_db, mark)
        )


async def _run_spread(
    targets: list[tuple[str, Load]], each: int, seconds: float, warmup: float, max_count: int, pids: Pids
) -> Measurement:
    for base_url, _ in targets:
        if urlsplit(base_url).hostname not in LOOPBACK:
            raise ValueError(f"the load only goes to this machine, not {base_url}")
    async with AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(_sessions("raw", url, each)) for url, _ in targets]
        bound = max(1, max_count // len(targets))

        def phases(window: float, record: bool) -> Awaitable[list[tuple[int, int, list[float], float]]]:
            return asyncio.gather(
                *(
                    _phase(group, load, window, bound, record)
                    for group, (_, load) in zip(sessions, targets, strict=True)
                )
            )

        if warmup > 0:
            await phases(warmup, False)
        clock = CpuClock(pids, with_db=True)
        clock.start()
        results = await phases(seconds, True)
        cpu = clock.stop()
    latencies = [latency for _, _, found, _ in results for latency in found]
    first_errors = [load.first_error for _, load in targets if load.first_error]
    return Measurement(
        name=f"http {targets[0][1].name}",
        backend="postgres",
        concurrency=each * len(targets),
        operations=len(latencies),
        # Each server's clients stop at the same deadline: the window is the longest of them.
        seconds=max(elapsed for _, _, _, elapsed in results),
        errors=sum(errors for _, errors, _, _ in results),
        latencies=latencies,
        cpu=cpu,
        notes={
            "issued": sum(issued for issued, _, _, _ in results),
            "client": "raw",
            "servers": len(targets),
            "per_server": [len(found) for _, _, found, _ in results],
            "first_error": first_errors[0] if first_errors else None,
        },
    )


def run_spread_load(
    targets: list[tuple[str, Load]], each: int, seconds: float, warmup: float, max_count: int, pids: Pids = None
) -> Measurement:
    """``each`` raw clients at every ``(base_url, load)`` of ``targets`` at once, warm-up then the measured
    window; one measurement over all of them (PostgreSQL: every local ``postgres`` process counts as ours)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run_spread(targets, each, seconds, warmup, max_count, pids))
