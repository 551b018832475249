"""Fellegi-Sunter record linkage for Patient records (DESIGN.md "Identity across institutions").

Certain: both records carry the same *valid* CURP and the same birth date. A placeholder or invalid CURP is
never evidence, and a record carrying the placeholder is never linked automatically. Otherwise each field's
agreement level adds log2(m/u) to the score; the total decides probable (linked), possible (a review queue,
not linked) or no match. Names are compared accent-folded with Jaro-Winkler; surnames also in swapped order.

Wrongly joining two people shows one patient's allergies, results and medicines as another's, far worse than
a missed link, so a probable score links automatically only when nothing contradicts it and something besides
name and birth date supports it:

- Conflicting identifiers block the link: both records carry identifiers of one system and share no value
  (two MRNs of one institution, two valid CURPs, two NSS). Two records of one institution with different
  record numbers are two registrations; if they are one person, a steward merges them.
- Name and birth date alone are common enough (namesakes share both) that they only make a possible match:
  a probable link also needs a shared identifier value (an NSS, a record number) or agreement on both sex and
  state of birth.

Either way the pair goes to the review queue (possible), never to an automatic link.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import jellyfish

from ehr_core.identity.features import Features
from ehr_core.identity.identifiers import CURP_SYSTEM

__all__ = ["Grade", "Match", "compare", "conflicting_systems", "grade", "shared_systems"]


class Grade(StrEnum):
    """The PDQm match-grade codes."""

    CERTAIN = "certain"
    PROBABLE = "probable"
    POSSIBLE = "possible"
    CERTAINLY_NOT = "certainly-not"


def _w(m: float, u: float) -> float:
    return math.log2(m / u)


# (exact, similar, different) weights for each name part; m/u estimated for Mexican name frequencies.
_GIVEN = (_w(0.90, 0.01), _w(0.0998, 0.03), _w(0.0002, 0.96))
_SURNAME = (_w(0.90, 0.006), _w(0.08, 0.03), _w(0.02, 0.964))
_BIRTH = (_w(0.95, 0.00005), _w(0.04, 0.001), _w(0.01, 0.999))
_SEX = (_w(0.98, 0.5), _w(0.02, 0.5))
_STATE = (_w(0.95, 0.06), _w(0.05, 0.94))
_CURP_SAME = _w(0.90, 1e-7)
_CURP_DIFFERENT = _w(0.000002, 0.999)

#: Score thresholds: at or above PROBABLE links automatically; at or above POSSIBLE goes to review.
PROBABLE = 23.0
POSSIBLE = 10.0

_EXACT, _SIMILAR = 0.97, 0.88


@dataclass(frozen=True)
class Match:
    grade: Grade
    score: float
    method: str  # "curp" for certain, "fellegi-sunter" otherwise

    @property
    def linkable(self) -> bool:
        return self.grade in (Grade.CERTAIN, Grade.PROBABLE)


def _similarity(a: str, b: str) -> float:
    if not a or not b:
        return -1.0
    if a == b:
        return 1.0
    return float(jellyfish.jaro_winkler_similarity(a, b))


def _level(similarity: float, weights: tuple[float, float, float]) -> float:
    if similarity < 0:
        return 0.0  # missing on one side: no evidence
    if similarity >= _EXACT:
        return weights[0]
    if similarity >= _SIMILAR:
        return weights[1]
    return weights[2]


def _given(a: str, b: str) -> float:
    if not a or not b:
        return -1.0
    # "MARIA GUADALUPE" vs "GUADALUPE", "JOSE LUIS" vs "LUIS": compare whole names and first words.
    first_a, first_b = a.split()[0], b.split()[0]
    return max(
        _similarity(a, b),
        _similarity(first_a, first_b) - 0.02,
        _similarity(a, first_b) - 0.05,
        _similarity(first_a, b) - 0.05,
    )


def _surnames(a: Features, b: Features) -> float:
    direct = _level(_similarity(a.surname1, b.surname1), _SURNAME) + _level(
        _similarity(a.surname2, b.surname2), _SURNAME
    )
    if a.surname2 and b.surname2:
        swapped = _level(_similarity(a.surname1, b.surname2), _SURNAME) + _level(
            _similarity(a.surname2, b.surname1), _SURNAME
        )
        return max(direct, swapped - 1.0)  # a swap is a small penalty
    # One side has a single surname: it may be either of the other side's (a swap, then a dropped one).
    single, pair = (a, b) if not a.surname2 else (b, a)
    crossed = _level(_similarity(single.surname1, pair.surname2), _SURNAME) - 1.0
    return max(direct, crossed)


def _near_dates(a: str, b: str) -> bool:
    """One digit wrong, two adjacent digits transposed, or day and month swapped."""
    if len(a) != len(b):
        return False
    differences = [i for i in range(len(a)) if a[i] != b[i]]
    if len(differences) == 1:
        return True
    if len(differences) == 2:
        i, j = differences
        if j == i + 1 and a[i] == b[j] and a[j] == b[i]:
            return True
    return a[:4] == b[:4] and a[5:7] == b[8:10] and a[8:10] == b[5:7]


def _birth(a: str, b: str) -> float:
    if not a or not b:
        return 0.0
    if a == b:
        return _BIRTH[0]
    return _BIRTH[1] if _near_dates(a, b) else _BIRTH[2]


def _pair(a: str, b: str, weights: tuple[float, float]) -> float:
    if not a or not b:
        return 0.0
    return weights[0] if a == b else weights[1]


def _identifier_values(features: Features) -> dict[str, set[str]]:
    """Identifier values by system; the CURP only when valid (a placeholder or invalid CURP is no evidence)."""
    values: dict[str, set[str]] = {}
    for system, value in features.identifiers:
        if system == CURP_SYSTEM or not value.strip():
            continue
        values.setdefault(system, set()).add(value.strip())
    if features.curp_status == "valid" and features.curp:
        values[CURP_SYSTEM] = {features.curp}
    return values


def conflicting_systems(a: Features, b: Features) -> list[str]:
    """Systems in which both records carry an identifier and no value is shared: evidence of two people."""
    mine, theirs = _identifier_values(a), _identifier_values(b)
    return sorted(system for system in mine.keys() & theirs.keys() if not mine[system] & theirs[system])


def shared_systems(a: Features, b: Features) -> list[str]:
    """Systems in which both records carry the same identifier value: evidence of one person."""
    mine, theirs = _identifier_values(a), _identifier_values(b)
    return sorted(system for system in mine.keys() & theirs.keys() if mine[system] & theirs[system])


def _corroborated(a: Features, b: Features) -> bool:
    """Something besides name and birth date says these are one person."""
    if shared_systems(a, b):
        return True
    return bool(a.sex and a.state) and a.sex == b.sex and a.state == b.state


def compare(a: Features, b: Features) -> Match:
    """How likely two records are one person."""
    if a.curp_status == "valid" and b.curp_status == "valid" and a.curp == b.curp and a.birth_date == b.birth_date:
        return Match(Grade.CERTAIN, 100.0, "curp")
    score = _level(_given(a.given, b.given), _GIVEN) + _surnames(a, b) + _birth(a.birth_date, b.birth_date)
    score += _pair(a.sex, b.sex, _SEX) + _pair(a.state, b.state, _STATE)
    if a.curp_status == "valid" and b.curp_status == "valid":
        score += _CURP_SAME if a.curp == b.curp else _CURP_DIFFERENT
    return Match(grade(score, a, b), round(score, 3), "fellegi-sunter")


def grade(score: float, a: Features, b: Features) -> Grade:
    if score >= PROBABLE:
        # Never link automatically on a placeholder CURP: such a record waits for a person to decide.
        if "placeholder" in (a.curp_status, b.curp_status):
            return Grade.POSSIBLE
        # Conflicting identifiers, or name and birth date with nothing else: a steward decides.
        if conflicting_systems(a, b) or not _corroborated(a, b):
            return Grade.POSSIBLE
        return Grade.PROBABLE
    if score >= POSSIBLE:
        return Grade.POSSIBLE
    return Grade.CERTAINLY_NOT
