"""At start-up, a store indexed under another search registry is re-indexed before anything is served.

A new version may search more parameters (or read a data type differently) than the one that indexed the
stored resources: without a re-index, a parameter new in this version silently misses every resource stored
before the upgrade. So the process that projects — the server with ``EHR_PROJECTION=inline`` (the default),
or the ``ehr project`` worker — re-indexes at start when the index's registry fingerprint differs
(projections/search/reindex.py), with progress on stderr. It reads the current resources' view (no log
replay), about as costly per resource as indexing during an import; it holds the set-up lock meanwhile, so
the other processes of the deployment wait for a current index rather than serve from a stale one. API
servers started with ``EHR_PROJECTION=worker`` leave it to the worker. ``ehr rebuild resources`` gives a
current index too.
"""

from __future__ import annotations

import sys
import time

from ehr_core.schema import setup_lock
from fhir_api.services import Services
from projections.search.reindex import reindex, stale

__all__ = ["reindex_if_stale"]

#: Seconds between progress lines.
_EVERY = 5.0


def reindex_if_stale(services: Services) -> int | None:
    """Re-index the search index when it was built with another registry; how many resources (None: current)."""
    views = services.views
    if not stale(views):
        return None
    with setup_lock(services.settings):
        if not stale(views):  # another process of the deployment did it while this one waited
            return None
        started = last = time.monotonic()
        print(
            "ehr: the search index was built with another search registry; indexing the stored resources again",
            file=sys.stderr,
            flush=True,
        )

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= _EVERY:
                print(f"ehr: re-indexed {done:,}/{total:,} resources", file=sys.stderr, flush=True)
                last = now

        done = reindex(views, progress)
        seconds = time.monotonic() - started
        print(f"ehr: re-indexed {done:,} resources in {seconds:.1f} s", file=sys.stderr, flush=True)
        return done
