"""A reference row's target by key: ``search_reference.target_sid``, the ``sid`` of the resource it names.

R4 §3.1.1.4.12 chained parameters: ``Encounter?patient.name=X`` finds the Patients named X by the name's index
(their keys), then the Encounters that refer to them. With references held only by the target's id, each
Patient's key had to be turned into its id first (a ``search_ids`` look-up per Patient: at 1,000,000
resources some 1,000 of them, half the index probes of the search). So each row of a literal reference
(one with a type, relative or absolute) also holds its target's key when that target is stored, and a chain
goes from the name's keys to the references in one index (``search_reference_target``, projections/search/
chains.py).

The key is kept right through the target's life, whatever the order things arrive in:

* written with the row: the target found in ``search_ids``, or among the resources the same batch creates;
* a target created after the references to it (a forward reference, or one re-created after a delete, which
  gets a new key): the rows still without a key that name it are given the new one (:func:`claim`, through
  ``search_reference_unresolved``, which holds only those rows);
* a target deleted: the rows holding its key lose it (:func:`forget`), so a re-creation finds them again.

A row whose target is not stored (yet), or a reference with no type (a canonical URL), keeps NULL: no chain
reaches a resource that is not there. The base is not looked at here (an absolute reference's target is
the resource of that type and id if stored); a chain still requires the row's base to be none or the
server's own, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projections.db import Tx

__all__ = ["CLAIM", "DDL", "TARGET_KEY", "claim", "claim_params", "forget"]

#: The indexes that keep keys right: a chain's walk and :func:`forget` read the first (a walk needs nothing
#: else of the row: its base is there, and the key names the target's type), :func:`claim` the second (the
#: rows still without a key: references to resources not stored, usually few).
DDL = (
    "CREATE INDEX IF NOT EXISTS search_reference_target ON search_reference (target_sid, resource_type, param, "
    "base, sid) WHERE target_sid IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS search_reference_unresolved ON search_reference (target_type, target_id) "
    "WHERE target_sid IS NULL AND target_type IS NOT NULL",
)

#: PostgreSQL, in the one-statement write of a create (projections/search/writes.py): a reference row's key,
#: given (a target the batch creates) or looked up by the target's type and id (JSON row ``r``: type
#: ``r->>2``, id ``r->>3``, key ``r->>5``). The batch's own key rows are not visible to their own statement.
TARGET_KEY = (
    "COALESCE((r->>5)::int8, (SELECT i.sid FROM search_ids i WHERE i.resource_type = r->>2 AND i.resource_id = r->>3))"
)

#: PostgreSQL: give the rows without a key that name one of the created resources (``type/id`` texts, their
#: types, their ids, their keys: four arrays) that resource's key. ``= ANY`` on both columns is an index
#: condition on ``search_reference_unresolved``: no join for the planner to guess about (autovacuum may be
#: off and the tables never analysed).
CLAIM = (
    "UPDATE search_reference SET target_sid = (?::int8[])[array_position(?::text[], target_type || '/' || "
    "target_id)] WHERE target_sid IS NULL AND target_type IS NOT NULL AND target_type = ANY(?::text[]) "
    "AND target_id = ANY(?::text[]) AND target_type || '/' || target_id = ANY(?::text[])"
)


def claim_params(created: Sequence[tuple[str, str, int]]) -> list[Any]:
    """:data:`CLAIM`'s parameters for the created resources (type, id, key)."""
    names = [f"{kind}/{resource_id}" for kind, resource_id, _ in created]
    return [
        [sid for _, _, sid in created],
        names,
        sorted({kind for kind, _, _ in created}),
        [resource_id for _, resource_id, _ in created],
        names,
    ]


def claim(tx: Tx, created: Sequence[tuple[str, str, int]]) -> None:
    """Give the references still without a key that name a resource just created (type, id, key) its key."""
    if not created:
        return
    if tx.dialect == "postgres":
        tx.execute(CLAIM, claim_params(created))
        return
    tx.executemany(
        "UPDATE search_reference SET target_sid = ? WHERE target_sid IS NULL AND target_type = ? AND target_id = ?",
        [(sid, kind, resource_id) for kind, resource_id, sid in created],
    )


def forget(tx: Tx, sids: Sequence[int]) -> None:
    """The references to resources deleted (their keys ``sids``) lose the key: a re-creation has a new one."""
    for start in range(0, len(sids), 400):
        chunk = sids[start : start + 400]
        marks = ", ".join("?" * len(chunk))
        tx.execute(f"UPDATE search_reference SET target_sid = NULL WHERE target_sid IN ({marks})", chunk)
