"""Run a baseline operation from ``concurrency`` threads, bounded in time and count, after a warm-up.

Each thread gets its own worker (its own connection, say) before the clock starts; the operation is
called with nothing and must do one unit of work (one insert, one select).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from bench.stats import CpuClock, Measurement

__all__ = ["Worker", "run_threads"]

# A context manager giving one thread's operation (it opens and closes that thread's resources).
Worker = Callable[[], AbstractContextManager[Callable[[], None]]]


def run_threads(
    name: str,
    backend: str,
    worker: Worker,
    concurrency: int,
    seconds: float,
    warmup: float,
    max_count: int,
    min_seconds: float = 0.0,
    server_pid: int | None = None,
) -> Measurement:
    """``concurrency`` threads repeat the operation for ``warmup`` s (not counted), then together until
    ``seconds`` have passed or ``max_count`` operations are done, but never for less than ``min_seconds``
    (so a fast baseline is not timed over a window too short to mean anything)."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    window: dict[str, float] = {}
    clock = CpuClock(server_pid, with_db=backend == "postgres")
    tickets = itertools.count()  # next() on itertools.count is atomic under the GIL

    def open_window() -> None:  # run by one thread while all wait: every thread then sees the deadline
        clock.start()
        window["began"] = time.perf_counter()
        window["deadline"] = window["began"] + seconds
        window["minimum"] = window["began"] + min(min_seconds, seconds)

    ready = threading.Barrier(concurrency + 1)
    measured = threading.Barrier(concurrency + 1, action=open_window)

    def loop(index: int) -> None:
        try:
            with worker() as operation:
                ready.wait()
                end = time.perf_counter() + warmup
                while time.perf_counter() < end:
                    operation()
                measured.wait()  # all threads start the measured window together
                mine = latencies[index]
                end, minimum = window["deadline"], window["minimum"]
                while True:
                    now = time.perf_counter()
                    if now >= end or (next(tickets) >= max_count and now >= minimum):
                        break
                    began = time.perf_counter()
                    operation()
                    mine.append(time.perf_counter() - began)
        except BaseException as error:
            errors.append(error)
            ready.abort()
            measured.abort()

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        ready.wait()
        measured.wait()
    except threading.BrokenBarrierError:
        pass
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{name} ({backend}) failed: {errors[0]!r}") from errors[0]
    elapsed = time.perf_counter() - window["began"]
    flat = [value for values in latencies for value in values]
    return Measurement(name, backend, concurrency, len(flat), elapsed, latencies=flat, cpu=clock.stop())
