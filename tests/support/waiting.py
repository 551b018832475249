"""Waiting for a condition instead of sleeping for a guessed time.

A fixed sleep is too short on a busy machine and wasted on an idle one; a test waits for what it needs
(the server says the store is writable again, a writer was answered) with a bound that only a hang
reaches, and fails naming what it waited for and what it saw last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["HANG", "wait_until"]

T = TypeVar("T")

#: Seconds after which a wait means something hangs (generous: a loaded CI machine takes several times longer).
HANG = 120.0


def wait_until(
    predicate: Callable[[], T],
    what: str,
    timeout: float = HANG,
    interval: float = 0.1,
    seen: Callable[[], object] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true; return that.

    After ``timeout`` seconds fail with ``what`` (what was awaited) and, if given, what ``seen()`` shows then.
    Exceptions from ``predicate`` are not swallowed: a broken check fails at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            shown = f"; last seen: {seen()!r}" if seen is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{shown}")
        time.sleep(interval)
