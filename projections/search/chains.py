"""A chain's keys read from its targets outward (PostgreSQL), so a search can count them and be driven by them.

R4 §3.1.1.4.12: ``Encounter?patient.name=X`` matches the Encounters whose ``patient`` reference points to a
Patient named X. As a condition (projections/search/sql.py ``_chain``) it is a semi-join on the reference
table that the planner orders as it estimates; on a store never analysed (autovacuum may be off) it read
every ``patient`` reference of the type once per match of the name (300,000 resources: over the 60 s
statement timeout). :func:`chain_keys` writes the same set the other way round, as nested loops whatever
the statistics: the inner condition's keys (one value table's index range), then each target's references
by its key (``search_reference_target``, projections/search/targets.py), each target looked up in
``search_ids`` first only when an access policy applies to it. What it reads is proportional to the targets
and their references, so
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
        # planner may hash on estimates; kept, it is a parameterised index look-up per outer row. The
        # references are read by their target's key (projections/search/targets.py: no look-up of each
        # target's id); a target is looked up in search_ids only for the access policy, when there is one.
        source, source_params = f"({keys}) {target}", list(nested.params)
        if policy.sql:
            source = (
                f"({keys}) {target}k CROSS JOIN LATERAL (SELECT {target}.sid FROM search_ids {target} "
                f"WHERE {target}.resource_type = ? AND {target}.sid = {target}k.sid{policy.sql} OFFSET 0) {target}"
            )
            source_params += [target_type, *policy.params]
        walks.append(
            Condition(
                f"SELECT {reference}.sid FROM {source} CROSS JOIN LATERAL (SELECT {reference}.sid FROM "
                f"search_reference {reference} WHERE {reference}.target_sid = {target}.sid AND "
                f"{reference}.resource_type = ? AND {reference}.param = ? AND {base_clause} OFFSET 0) {reference}",
                [*source_params, item.param.resource_type, item.param.code, *base_params],
            )
        )
        # One key: its own references (the reference table's sid index: ``|| ''`` keeps the lookup index out,
        # which a store never analysed otherwise scans whole for each key, on its columns after the first),
        # each target's condition by its key; with an access policy, each target by id (search_ids' unique
        # index) first.
        if policy.sql:
            inner_check = row_check(Condition(keys, list(nested.params)), f"{target}.sid")
            target_check = Condition(
                f"(EXISTS (SELECT 1 FROM search_ids {target} WHERE {target}.resource_type = ? "
                f"AND {target}.resource_id = {reference}.target_id{policy.sql} AND {inner_check.sql} OFFSET 0)) "
                "IS TRUE",
                [target_type, *policy.params, *inner_check.params],
            )
        else:
            target_check = row_check(Condition(keys, list(nested.params)), f"{reference}.target_sid")
        checks.append(
            Condition(
                f"(EXISTS (SELECT 1 FROM search_reference {reference} WHERE {reference}.sid = c.sid AND "
                f"{reference}.resource_type || '' = ? AND {reference}.param || '' = ? "
                f"AND {reference}.target_type || '' = ? AND {base_clause} AND {target_check.sql} OFFSET 0)) IS TRUE",
                [item.param.resource_type, item.param.code, target_type, *base_params, *target_check.params],
            )
        )
    check = Condition(" OR ".join(f"({c.sql})" for c in checks), [p for c in checks for p in c.params])
    if len(walks) == 1:
        return Walk(walks[0], check)
    keys_sql = " UNION ALL ".join(f"({walk.sql})" for walk in walks)
    return Walk(Condition(keys_sql, [p for w in walks for p in w.params]), check)
