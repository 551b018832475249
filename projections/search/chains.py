"""A chain's keys read from its targets outward (PostgreSQL), so a search can count them and be driven by them.

R4 §3.1.1.4.12: ``Encounter?patient.name=X`` matches the Encounters whose ``patient`` reference points to a
Patient named X. As a condition (projections/search/sql.py ``_chain``) it is a semi-join on the reference
table that the planner orders as it estimates; on a store never analysed (autovacuum may be off) it read
every ``patient`` reference of the type once per match of the name (300,000 resources: over the 60 s
statement timeout). :func:`chain_keys` writes the same set the other way round, as nested loops whatever
the statistics: the inner condition's keys (one value table's index range), each target looked up by key
in ``search_ids`` (type, access policy), then each target's references by its id in the reference table's
lookup index. What it reads is proportional to the targets and their references, so
projections/search/keysets.py can fetch them, bounded, and drive a page from them when they are few
(1,000,000 resources: ~1,000 Patients of a family, ~4,000 Encounters).
"""

from __future__ import annotations

from projections.search.keysets import Walk, key_subquery, one_table, row_check
from projections.search.query import ChainFilter
from projections.search.sql import Condition, Context, condition

__all__ = ["chain_keys"]


def chain_keys(item: ChainFilter, base: str | None, context: Context) -> Walk | None:
    """The keys (``sid``) of the resources whose ``item.param`` refers to a target matching the chain, read
    target by target, and the check of one key ``c.sid`` against the chain; None when a target's condition
    is not one value table's set (a nested chain, ``_has``, ``:missing``...): such a chain stays a semi-join
    the planner orders."""
    walks: list[Condition] = []
    checks: list[Condition] = []
    for target_type, inner in item.inner:
        target = context.next("t")
        nested = condition(inner, target, base, context)
        keys = key_subquery(nested.sql, target)
        if keys is None or not one_table(Condition(keys)):
            return None
        policy = context.policy(target)
        reference = context.next("r")
        base_clause, base_params = (
            (f"({reference}.base IS NULL OR {reference}.base = ?)", [base.rstrip("/")])
            if base
            else (f"{reference}.base IS NULL", [])
        )
        # OFFSET 0 keeps each lateral subquery a subquery: flattened, its key would be a join condition the
        # planner may hash on estimates; kept, it is a parameterised index look-up per outer row.
        walks.append(
            Condition(
                f"SELECT {reference}.sid FROM ({keys}) {target}k CROSS JOIN LATERAL (SELECT {target}.resource_id "
                f"FROM search_ids {target} WHERE {target}.resource_type = ? AND {target}.sid = {target}k.sid"
                f"{policy.sql} OFFSET 0) {target} CROSS JOIN LATERAL (SELECT {reference}.sid FROM search_reference "
                f"{reference} WHERE {reference}.resource_type = ? AND {reference}.param = ? AND "
                f"{reference}.target_type = ? AND {reference}.target_id = {target}.resource_id AND {base_clause} "
                f"OFFSET 0) {reference}",
                [
                    *nested.params,
                    target_type,
                    *policy.params,
                    item.param.resource_type,
                    item.param.code,
                    target_type,
                    *base_params,
                ],
            )
        )
        # One key: its own references (the reference table's sid index: ``|| ''`` keeps the lookup index out,
        # which a store never analysed otherwise scans whole for each key, on its columns after the first),
        # each target by id (search_ids' unique index), its condition by the target's key.
        inner_check = row_check(Condition(keys, list(nested.params)), f"{target}.sid")
        checks.append(
            Condition(
                f"(EXISTS (SELECT 1 FROM search_reference {reference} WHERE {reference}.sid = c.sid AND "
                f"{reference}.resource_type || '' = ? AND {reference}.param || '' = ? "
                f"AND {reference}.target_type || '' = ? "
                f"AND {base_clause} AND (EXISTS (SELECT 1 FROM search_ids {target} WHERE {target}.resource_type = ? "
                f"AND {target}.resource_id = {reference}.target_id{policy.sql} AND {inner_check.sql} OFFSET 0)) "
                "IS TRUE OFFSET 0)) IS TRUE",
                [
                    item.param.resource_type,
                    item.param.code,
                    target_type,
                    *base_params,
                    target_type,
                    *policy.params,
                    *inner_check.params,
                ],
            )
        )
    check = Condition(" OR ".join(f"({c.sql})" for c in checks), [p for c in checks for p in c.params])
    if len(walks) == 1:
        return Walk(walks[0], check)
    keys_sql = " UNION ALL ".join(f"({walk.sql})" for walk in walks)
    return Walk(Condition(keys_sql, [p for w in walks for p in w.params]), check)
