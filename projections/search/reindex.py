"""Re-indexing stored resources when the search registry changes (a new version with more parameters, or
another reading of a data type).

The search index records the fingerprint of the registry it was built with (``search_registry``; see
:data:`projections.search.extract.FINGERPRINT`). When it differs from this version's, the value rows of every
current resource are built again from the current resources' view — the stored bodies, no log replay, no
decryption — in batches, each one transaction holding the ``resources`` tracking rows (the live projector
pauses between batches, never sees a half-indexed resource), and the new fingerprint is recorded last: a
re-index stopped half-way is started again from the beginning next time. Keys (``sid``) and
``_lastUpdated`` stay; the full-text view does not depend on the registry and is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable

from projections.db import Tx, ViewDatabase
from projections.search.extract import FINGERPRINT
from projections.search.index import SearchIndex

__all__ = ["FINGERPRINT", "reindex", "stale"]

#: ``progress(resources done, resources in the index)`` after each batch.
Progress = Callable[[int, int], None]


def stale(database: ViewDatabase) -> bool:
    """Whether the search index was built with another registry than this version's."""
    with database.read_primary() as tx:
        return SearchIndex.fingerprint(tx) != FINGERPRINT


def _hold_resources_projection(tx: Tx, database: ViewDatabase) -> None:
    """Lock the tracking rows of the projectors that write the search index (one per store in a federation),
    in name order; SQLite's write transaction already excludes every other writer."""
    if database.dialect == "postgres":
        tx.execute(
            "SELECT position FROM projection_tracking WHERE name = 'resources' OR name LIKE 'resources@%' "
            "ORDER BY name FOR UPDATE"
        ).fetchall()


def reindex(database: ViewDatabase, progress: Progress | None = None, batch_size: int = 1000) -> int:
    """Index every current resource again with this registry; record its fingerprint. Returns how many."""
    index = SearchIndex()
    with database.read_primary() as tx:
        row = tx.execute("SELECT COUNT(*) FROM search_ids").fetchone()
    total = int(row[0]) if row else 0
    done, after = 0, 0
    while True:
        with database.write() as tx:
            _hold_resources_projection(tx, database)
            count, after = index.reindex_batch(tx, database.dialect, after, batch_size)
            if count == 0:
                SearchIndex.mark_current(tx)
                return done
        done += count
        if progress is not None:
            progress(done, max(total, done))
