"""A labelled set for measuring the matcher: records of synthetic people, some registered at several
institutions with registration noise, each record labelled with its true person."""

from __future__ import annotations

import random

from ehr_core.demo.people import NOISE, Record, make_people, noisy_record

__all__ = ["labelled_records"]

INSTITUTIONS = ["IMSS", "ISSSTE", "IMSS-BIENESTAR"]


def labelled_records(
    people: int = 500, seed: int = 7, duplicate_rate: float = 0.45, placeholder_rate: float = 0.03
) -> list[Record]:
    """Records in a shuffled registration order; ``Record.person`` is the truth."""
    rng = random.Random(seed)
    records: list[Record] = []
    for person in make_people(people, seed):
        institutions = rng.sample(INSTITUTIONS, 3)
        copies = 1 + (rng.choice([1, 1, 2]) if rng.random() < duplicate_rate else 0)
        for n, institution in enumerate(institutions[:copies]):
            kinds: list[str] = []
            if n > 0:
                kinds = rng.sample(NOISE, rng.choice([1, 1, 2]))
            elif rng.random() < 0.15:
                kinds = ["no-curp"]
            if rng.random() < placeholder_rate:
                kinds = [k for k in kinds if k != "no-curp"] + ["placeholder-curp"]
            local = f"{institution[:3]}-{person.key:05d}-{n}"
            records.append(noisy_record(person, institution, local, rng, kinds))
    rng.shuffle(records)
    return records
