"""The request threads: where the FHIR API's blocking work (the store, the views) runs off the event loop.

Two pools, both started and stopped by the app's lifespan (:func:`request_threads`, fhir_api/app.py):

- The *reading* pool, a few threads, is the event loop's default executor: reads, searches, the access
  policy's decisions, token checks, every hand-off outside a write. That work holds the interpreter lock
  most of its time, and the event loop needs the same lock for every request: each further runnable thread
  only takes the lock from the loop more often. Measured at 32 clients reading by id on PostgreSQL
  (``python -m bench.one_load read``, alternating runs; bench/README.md): 40 threads 348-417 reads/s in seven
  runs, 8 threads 383-604/s, 4 threads 401-622/s in six; the server's CPU a read 2.9-3.4 ms with 40 threads,
  2.0-2.7 ms with 4.
- The *writing* pool, many threads, serves the hand-offs of write requests (``POST``, ``PUT``, ``PATCH``,
  ``DELETE`` under ``/fhir``, marked by :func:`writing`): a write spends most of its time waiting without the
  lock, for the group commit (whose leader appends every write queued behind it: the more writers wait
  together, the fewer transactions; ehr_core/group_commit.py) and for the projections to show it
  (read-your-writes). Few threads there would mean small groups and writes queued behind waits.

Both are plain executors, not anyio's ``to_thread`` (what ``run_in_threadpool`` calls): its backend and
limiter look-ups, cancel scopes and worker queue cost the event loop, per hand-off, about as much as the rest
of a read's routing. The request's context variables go with the call as they do with anyio's. Unlike
anyio's, a cancelled hand-off does not wait for its thread: the request's deadline (fhir_api/limits.py)
answers at once and the thread finishes unobserved, and a shutdown past its grace does not wait for a thread
stuck in the database (fhir_api/server.py bounds that too). SQLite's views keep a connection per thread
(projections/db.py): two fixed pools bound those connections as one did.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

__all__ = [
    "READING_THREADS",
    "REQUEST_THREAD_PREFIX",
    "WRITING_THREADS",
    "in_thread",
    "request_threads",
    "writing",
]

P = ParamSpec("P")
T = TypeVar("T")

READING_THREADS = 4
#: As many as anyio's default limiter allowed, so 32 clients' writes still wait side by side.
WRITING_THREADS = 40
REQUEST_THREAD_PREFIX = "ehr-request"

#: Set for the length of a write request: its hand-offs go to the writing pool.
_writing: contextvars.ContextVar[bool] = contextvars.ContextVar("ehr_writing_request", default=False)
#: Each serving loop's writing pool (a test may run several apps, each on a loop of its own).
_writing_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ThreadPoolExecutor] = weakref.WeakKeyDictionary()


@contextmanager
def request_threads() -> Iterator[None]:
    """Both pools for the running loop, for the app's lifetime (call it from the lifespan, on the loop)."""
    loop = asyncio.get_running_loop()
    reading = ThreadPoolExecutor(READING_THREADS, thread_name_prefix=f"{REQUEST_THREAD_PREFIX}-read")
    writes = ThreadPoolExecutor(WRITING_THREADS, thread_name_prefix=f"{REQUEST_THREAD_PREFIX}-write")
    loop.set_default_executor(reading)
    _writing_pools[loop] = writes
    try:
        yield
    finally:
        _writing_pools.pop(loop, None)
        # A request's thread past uvicorn's grace finishes unobserved.
        reading.shutdown(wait=False)
        writes.shutdown(wait=False)


@contextmanager
def writing() -> Iterator[None]:
    """Mark the current request as a write: its hand-offs take threads from the writing pool."""
    token = _writing.set(True)
    try:
        yield
    finally:
        _writing.reset(token)


async def in_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` in a request thread, with this request's context variables."""
    call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
    loop = asyncio.get_running_loop()
    pool = _writing_pools.get(loop) if _writing.get() else None
    return await loop.run_in_executor(pool, call)
