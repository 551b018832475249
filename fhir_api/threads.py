"""The request threads: where the FHIR API's blocking work (the store, the views) runs off the event loop.

One pool for every hand-off, the event loop's default executor, sized by the app's lifespan
(fhir_api/app.py): plain-function routes (fhir_api/auth/pending.py) and the coroutines' own hand-offs
(:func:`in_thread`) take their threads from it, so a server under load keeps one set of threads, and one
SQLite connection per thread (projections/db.py), not one set per kind of hand-off.

Not anyio's ``to_thread`` (what ``run_in_threadpool`` calls): its backend and limiter look-ups, cancel
scopes and worker queue cost the event loop, per hand-off, about as much as the rest of a read's routing.
The request's context variables go with the call as they do with anyio's. Unlike anyio's, a cancelled
hand-off does not wait for its thread: the request's deadline (fhir_api/limits.py) answers at once and the
thread finishes unobserved, and a shutdown past its grace does not wait for a thread stuck in the
database (fhir_api/server.py bounds that too).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["in_thread"]

P = ParamSpec("P")
T = TypeVar("T")


async def in_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` in a request thread, with this request's context variables."""
    call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(None, call)
