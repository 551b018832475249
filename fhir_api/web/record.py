"""The unified record of one person, arranged for reading: built from the resources ``$everything`` serves.

Pure functions over FHIR JSON (no I/O): the same arrangement serves the current record and the record as
it was at a moment (:mod:`fhir_api.web.asof`). A code the resource names by neither ``text`` nor any
``display`` is named by its display in the terminology store (what ``CodeSystem/$lookup`` answers, looked
up by the page, projections/terminology/displays.py, then given to :func:`named`), so a reader sees
"Diabetes mellitus tipo 2" rather than ``E11.9``.
Each resource's institution and unit come from the ``meta.source`` the API sets on ``$everything`` entries
(``urn:ehr-core:source:{institution}:{CLUES}``, see fhir_api/operations/unified.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import unquote

from fhir_api.web.schedule import CVX, SCHEDULE, Dose

__all__ = ["Record", "TimelineItem", "arrange", "institution_colour", "named", "source_of", "unnamed_codes"]

SOURCE_PREFIX = "urn:ehr-core:source:"
CLUES_SYSTEM = "urn:oid:2.16.840.1.113883.4.631"
CURP_SYSTEM = "urn:oid:2.16.840.1.113883.4.629"
NSS_SYSTEM = "urn:ehr-core:sid:imss-nss"
LOINC = "http://loinc.org"

#: Each institution its own colour, kept apart for colour-blind readers (and always with a text label).
_COLOURS = {"IMSS": "#1b7a3e", "ISSSTE": "#1f5fa8", "IMSS-BIENESTAR": "#9d2449", "PEMEX": "#b8860b"}
_SPARE = ("#6a3d9a", "#8c564b", "#d95f02", "#4d4d4d")

#: LOINC vital signs charted (DOMAIN.md): blood pressure, glucose, weight.
SYSTOLIC, DIASTOLIC, GLUCOSE, WEIGHT = "8480-6", "8462-4", "2339-0", "29463-7"
_SHORT = {
    SYSTOLIC: "TA sys",
    DIASTOLIC: "TA dia",
    "8867-4": "FC",
    "8310-5": "T",
    WEIGHT: "kg",
    "59408-5": "SpO2",
    GLUCOSE: "glu",
}


def institution_colour(institution: str) -> str:
    if institution in _COLOURS:
        return _COLOURS[institution]
    return _SPARE[sum(map(ord, institution)) % len(_SPARE)]


def source_of(resource: dict[str, Any]) -> tuple[str, str | None]:
    """(institution, unit CLUES) of an entry served by ``$everything``."""
    source = str((resource.get("meta") or {}).get("source") or "")
    if source.startswith(SOURCE_PREFIX):
        institution, _, unit = source[len(SOURCE_PREFIX) :].rpartition(":")
        unit = unquote(unit)
        return unquote(institution) or "?", (None if unit in ("", "unknown") else unit)
    return "?", None


#: The elements whose concepts the record shows (_concept_text of each, in :func:`arrange`).
_SHOWN_CONCEPTS = ("code", "vaccineCode", "medicationCodeableConcept", "reasonCode")


def _shown_concepts(resource: dict[str, Any]) -> list[dict[str, Any]]:
    concepts = []
    for key in _SHOWN_CONCEPTS:
        value = resource.get(key)
        concepts += [c for c in (value if isinstance(value, list) else [value]) if isinstance(c, dict)]
    return concepts


def _unnamed(concept: dict[str, Any]) -> list[dict[str, Any]]:
    """The codings of a concept that has neither text nor any display (else the resource names it)."""
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    if concept.get("text") or any(c.get("display") for c in codings):
        return []
    return [c for c in codings if isinstance(c.get("system"), str) and isinstance(c.get("code"), str)]


def unnamed_codes(resources: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (system, code) pairs the record would show bare, in first-seen order."""
    found = (
        (str(c["system"]), str(c["code"]))
        for resource in resources
        for concept in _shown_concepts(resource)
        for c in _unnamed(concept)
    )
    return list(dict.fromkeys(found))


def named(resources: list[dict[str, Any]], displays: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """The resources, a display added (for reading, never stored) to each coding :func:`unnamed_codes`
    found whose code system gives one; the others are the same objects."""
    if not displays:
        return resources
    result = []
    for resource in resources:
        copied: dict[str, Any] | None = None
        for key in _SHOWN_CONCEPTS:
            value = resource.get(key)
            concepts = value if isinstance(value, list) else [value]
            if not any(isinstance(c, dict) and _named_codings(c, displays) for c in concepts):
                continue
            copied = copied or dict(resource)
            fixed = [_with_displays(c, displays) if isinstance(c, dict) else c for c in concepts]
            copied[key] = fixed if isinstance(value, list) else fixed[0]
        result.append(copied or resource)
    return result


def _named_codings(concept: dict[str, Any], displays: dict[tuple[str, str], str]) -> bool:
    return any((c["system"], c["code"]) in displays for c in _unnamed(concept))


def _with_displays(concept: dict[str, Any], displays: dict[tuple[str, str], str]) -> dict[str, Any]:
    unnamed = {id(c) for c in _unnamed(concept)}
    codings = [
        c | {"display": displays[(c["system"], c["code"])]}
        if id(c) in unnamed and (c["system"], c["code"]) in displays
        else c
        for c in concept.get("coding") or []
    ]
    return concept | {"coding": codings}


def _concept_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    return ""


def _codes(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, dict):
        return []
    return [
        (str(c.get("system", "")), str(c.get("code", "")))
        for c in concept.get("coding") or []
        if isinstance(c, dict) and c.get("code")
    ]


def _first_code(concept: Any, system: str | None = None) -> str:
    for code_system, code in _codes(concept):
        if system is None or code_system == system:
            return code
    return ""


def _ref_id(reference: Any, kind: str) -> str | None:
    if isinstance(reference, dict):
        value = str(reference.get("reference") or "")
        if value.startswith(f"{kind}/"):
            return value.split("/")[1]
    return None


def _status(resource: dict[str, Any], key: str) -> str:
    value = resource.get(key)
    return _first_code(value) if isinstance(value, dict) else str(value or "")


@dataclass
class Entry:
    """A resource with its attribution, for the lists."""

    resource_type: str
    id: str
    text: str
    when: str
    institution: str
    unit: str | None
    detail: str = ""
    count: int = 1
    institutions: list[str] = field(default_factory=list)


@dataclass
class TimelineItem:
    when: str
    kind: str  # encounter class or resource kind: AMB, IMP, EMER, Immunization, ServiceRequest...
    title: str
    institution: str
    unit: str | None
    unit_name: str | None
    reference: str
    details: list[tuple[str, str]] = field(default_factory=list)  # (label key, text)


@dataclass
class CardRow:
    dose: Dose
    due: date | None
    given: Entry | None
    state: str  # given, not-recorded, due-later, not-applicable


@dataclass
class Record:
    patients: list[Entry]
    timeline: list[TimelineItem]
    problems: list[Entry]
    allergies: list[Entry]
    medications: list[Entry]
    card: list[CardRow]
    extra_immunizations: list[Entry]
    vitals: dict[str, list[tuple[str, float, str]]]  # LOINC -> (when, value, institution)
    institutions: list[str]
    counts: dict[str, int]
    resources: int


def _when(resource: dict[str, Any]) -> str:
    for key in ("effectiveDateTime", "occurrenceDateTime", "performedDateTime", "authoredOn", "recordedDate", "date"):
        if resource.get(key):
            return str(resource[key])
    period = resource.get("period") or resource.get("effectivePeriod") or resource.get("performedPeriod")
    if isinstance(period, dict) and period.get("start"):
        return str(period["start"])
    onset = resource.get("onsetDateTime")
    return str(onset) if onset else str((resource.get("meta") or {}).get("lastUpdated") or "")


def _birth(patients: list[dict[str, Any]]) -> date | None:
    for patient in patients:
        try:
            return date.fromisoformat(str(patient.get("birthDate"))[:10])
        except ValueError:
            continue
    return None


def _value(observation: dict[str, Any]) -> tuple[float, str] | None:
    quantity = observation.get("valueQuantity")
    if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
        return float(quantity["value"]), str(quantity.get("unit") or quantity.get("code") or "")
    return None


def _entry(resource: dict[str, Any], text: str, detail: str = "") -> Entry:
    institution, unit = source_of(resource)
    return Entry(
        str(resource["resourceType"]), str(resource.get("id")), text, _when(resource), institution, unit, detail
    )


def _card(immunizations: list[Entry], codes: dict[str, str], born: date | None, today: date) -> list[CardRow]:
    by_code: dict[str, list[Entry]] = defaultdict(list)
    for entry in sorted(immunizations, key=lambda e: e.when):
        by_code[codes.get(entry.id, "")].append(entry)
    rows = []
    for dose in SCHEDULE:
        given = [e for code in dose.cvx for e in by_code.get(code, [])]
        given.sort(key=lambda e: e.when)
        dose_given = given[dose.number - 1] if len(given) >= dose.number else None
        due = date.fromordinal(born.toordinal() + dose.age_days) if born else None
        if dose_given is not None:
            state = "given"
        elif due is None:
            state = "not-applicable"
        elif due <= today:
            # Nothing in the record says it was given: "not recorded", not "overdue" — doses given before
            # the record began (or elsewhere) are not known here.
            state = "not-recorded"
        else:
            state = "due-later"
        rows.append(CardRow(dose, due, dose_given, state))
    return rows


def arrange(resources: list[dict[str, Any]], locations: dict[str, str], today: date) -> Record:
    """The record's sections. ``locations``: Location id or CLUES → unit name."""
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for resource in resources:
        by_type[str(resource.get("resourceType"))].append(resource)
    patients = by_type["Patient"]
    born = _birth(patients)
    records = []
    for patient in patients:
        names = patient.get("name") or [{}]
        name = names[0] if isinstance(names[0], dict) else {}
        text = " ".join([*(name.get("given") or []), str(name.get("family") or "")]).strip() or str(patient.get("id"))
        identifiers = ", ".join(
            str(i.get("value")) for i in patient.get("identifier") or [] if isinstance(i, dict) and i.get("value")
        )
        records.append(_entry(patient, text, identifiers))

    # Encounter contents, keyed by the encounter they belong to.
    under: dict[str, list[tuple[str, str]]] = defaultdict(list)
    vitals_under: dict[str, list[str]] = defaultdict(list)
    vitals: dict[str, list[tuple[str, float, str]]] = defaultdict(list)
    timeline: list[TimelineItem] = []

    def unit_name(resource: dict[str, Any], unit: str | None) -> str | None:
        for key in ("location",):
            places = resource.get(key)
            if isinstance(places, list):
                for place in places:
                    lid = _ref_id((place or {}).get("location"), "Location")
                    if lid and lid in locations:
                        return locations[lid]
            elif isinstance(places, dict):
                lid = _ref_id(places, "Location")
                if lid and lid in locations:
                    return locations[lid]
        return locations.get(unit or "")

    for observation in by_type["Observation"]:
        code = _first_code(observation.get("code"), LOINC) or _first_code(observation.get("code"))
        value = _value(observation)
        encounter = _ref_id(observation.get("encounter"), "Encounter")
        if value is not None:
            vitals[code].append((_when(observation), value[0], source_of(observation)[0]))
            if encounter:
                vitals_under[encounter].append(f"{_SHORT.get(code, code)} {value[0]:g}")
        elif encounter:
            under[encounter].append(("observation", _concept_text(observation.get("code"))))
    for series in vitals.values():
        series.sort()

    problems: dict[str, Entry] = {}
    for condition in sorted(by_type["Condition"], key=_when):
        text = _concept_text(condition.get("code"))
        encounter = _ref_id(condition.get("encounter"), "Encounter")
        code = _first_code(condition.get("code"))
        if encounter:
            under[encounter].append(("diagnosis", f"{code} {text}".strip() if code and code not in text else text))
        else:
            institution, unit = source_of(condition)
            timeline.append(
                TimelineItem(
                    _when(condition),
                    "Condition",
                    text,
                    institution,
                    unit,
                    unit_name(condition, unit),
                    f"Condition/{condition.get('id')}",
                )
            )
        clinical = _status(condition, "clinicalStatus")
        if clinical in ("active", "recurrence", "relapse", ""):
            key = code or text
            entry = problems.get(key)
            institution = source_of(condition)[0]
            if entry is None:
                problems[key] = _entry(condition, text, code)
                problems[key].institutions = [institution]
            else:
                entry.count += 1
                entry.when = max(entry.when, _when(condition))
                if institution not in entry.institutions:
                    entry.institutions.append(institution)

    medications: dict[str, Entry] = {}
    for request in sorted(by_type["MedicationRequest"] + by_type["MedicationStatement"], key=_when):
        text = _concept_text(request.get("medicationCodeableConcept")) or str(
            (request.get("medicationReference") or {}).get("display") or ""
        )
        encounter = _ref_id(request.get("encounter") or request.get("context"), "Encounter")
        if encounter:
            under[encounter].append(("medication", text))
        if str(request.get("status")) in ("active", "on-hold", "intended"):
            entry = medications.get(text)
            institution = source_of(request)[0]
            if entry is None:
                medications[text] = _entry(request, text)
                medications[text].institutions = [institution]
            else:
                entry.count += 1
                entry.when = max(entry.when, _when(request))
                if institution not in entry.institutions:
                    entry.institutions.append(institution)

    allergies = [
        _entry(a, _concept_text(a.get("code")), _status(a, "clinicalStatus") or str(a.get("criticality") or ""))
        for a in by_type["AllergyIntolerance"]
    ]

    for visit in by_type["Encounter"]:
        institution, unit = source_of(visit)
        kind = str((visit.get("class") or {}).get("code") or "AMB")
        eid = str(visit.get("id"))
        details = list(under.get(eid, []))
        if vitals_under.get(eid):
            details.append(("vitals", ", ".join(vitals_under[eid])))
        reason = _concept_text((visit.get("reasonCode") or [{}])[0]) if visit.get("reasonCode") else ""
        timeline.append(
            TimelineItem(
                _when(visit),
                kind,
                reason,
                institution,
                unit,
                unit_name(visit, unit),
                f"Encounter/{eid}",
                details,
            )
        )

    immunizations = []
    codes: dict[str, str] = {}
    for immunization in by_type["Immunization"]:
        text = _concept_text(immunization.get("vaccineCode"))
        entry = _entry(immunization, text, str(immunization.get("status") or ""))
        immunizations.append(entry)
        codes[entry.id] = _first_code(immunization.get("vaccineCode"), CVX)
        timeline.append(
            TimelineItem(
                entry.when,
                "Immunization",
                text,
                entry.institution,
                entry.unit,
                unit_name(immunization, entry.unit),
                f"Immunization/{entry.id}",
            )
        )
    for kind in ("ServiceRequest", "Procedure", "DiagnosticReport"):
        for resource in by_type[kind]:
            institution, unit = source_of(resource)
            timeline.append(
                TimelineItem(
                    _when(resource),
                    kind,
                    _concept_text(resource.get("code")),
                    institution,
                    unit,
                    unit_name(resource, unit),
                    f"{kind}/{resource.get('id')}",
                )
            )
    timeline.sort(key=lambda item: item.when, reverse=True)
    card = _card(immunizations, codes, born, today)
    on_card = {row.given.id for row in card if row.given is not None}
    institutions = sorted({r.institution for r in records} | {t.institution for t in timeline})
    return Record(
        patients=records,
        timeline=timeline,
        problems=sorted(problems.values(), key=lambda e: e.when, reverse=True),
        allergies=allergies,
        medications=sorted(medications.values(), key=lambda e: e.when, reverse=True),
        card=card,
        extra_immunizations=[e for e in immunizations if e.id not in on_card],
        vitals=dict(vitals),
        institutions=institutions,
        counts={kind: len(items) for kind, items in sorted(by_type.items())},
        resources=len(resources),
    )
