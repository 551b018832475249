"""A deterministic synthetic population treated across IMSS, ISSSTE and IMSS-Bienestar (``ehr demo``).

For each person: a Patient record at their institution (some also at a second one, with registration
noise and sometimes no CURP), encounters over several years at units identified by CLUES, LOINC vital
signs, CIE-10 conditions, prescriptions, immunizations per the national schedule for children, pregnancies,
and referrals between institutions (ServiceRequest + Task). Every write names its institution and unit.

Sharing across institutions as a real population shows it: most persons with records at several
institutions gave each institution a consent to share (scope patient-privacy, policyRule OPTIN), some of
them with a deny provision keeping mental-health records (security label ``PSY``) inside the recording
institution; referrals are left requested (pending), accepted by the receiving institution, or completed
with a counter-referral (the receiving Encounter and a note), some rejected or cancelled. The receiving
institution's own writes move its Tasks (the write policy of :mod:`ehr_core.referrals`); a write that
advances a Task says to which version (:attr:`Write.step`), so a second load skips what is already done.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from ehr_core.demo.people import Person, make_people, noisy_record, patient_resource
from ehr_core.identity.identifiers import CLUES_SYSTEM
from ehr_core.referrals import INSTITUTION_SYSTEM, REFERRAL_CATEGORY

__all__ = ["Unit", "Write", "population"]

ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CVX = "http://hl7.org/fhir/sid/cvx"


@dataclass(frozen=True)
class Unit:
    clues: str
    name: str
    institution: str
    level: int  # 1 first-level clinic, 2 hospital


UNITS = [
    Unit("OCIMB000123", "Centro de Salud Rural San Juan Bautista", "IMSS-BIENESTAR", 1),
    Unit("CSIMB001245", "Centro de Salud Tuxtla Oriente", "IMSS-BIENESTAR", 1),
    Unit("GRIMB000877", "Hospital Rural Tlapa", "IMSS-BIENESTAR", 2),
    Unit("MCIMB005225", "Hospital General Ixtapaluca", "IMSS-BIENESTAR", 2),
    Unit("DFIMS000020", "UMF 20 Vallejo", "IMSS", 1),
    Unit("JCIMS000418", "UMF 48 Guadalajara", "IMSS", 1),
    Unit("NLIMS000331", "Hospital General de Zona 33 Monterrey", "IMSS", 2),
    Unit("DFIST000312", "Hospital Regional 1o de Octubre", "ISSSTE", 2),
    Unit("PLIST000105", "Clínica de Medicina Familiar Puebla", "ISSSTE", 1),
    Unit("YNIST000077", "Hospital General Mérida", "ISSSTE", 2),
]
ORGANIZATIONS = {"IMSS": "Instituto Mexicano del Seguro Social", "ISSSTE": "ISSSTE", "IMSS-BIENESTAR": "IMSS-Bienestar"}

CHRONIC = [
    ("E11.9", "Diabetes mellitus tipo 2 sin complicaciones", "Metformina 850 mg tableta"),
    ("I10", "Hipertensión esencial (primaria)", "Losartán 50 mg tableta"),
    ("E66.9", "Obesidad, no especificada", None),
    ("J45.9", "Asma, no especificada", "Salbutamol 100 µg inhalador"),
]
ACUTE = [
    ("J06.9", "Infección aguda de las vías respiratorias superiores", "Paracetamol 500 mg tableta"),
    ("A09", "Diarrea y gastroenteritis de presunto origen infeccioso", "Vida Suero Oral sobre"),
    ("N39.0", "Infección de vías urinarias", "Nitrofurantoína 100 mg cápsula"),
    ("K29.7", "Gastritis, no especificada", "Omeprazol 20 mg cápsula"),
    ("M54.5", "Lumbago no especificado", "Naproxeno 250 mg tableta"),
]
# (vaccine, CVX, age in days) — national schedule (DOMAIN.md)
SCHEDULE = [
    ("BCG", "19", 0),
    ("Hepatitis B", "08", 0),
    ("Hexavalente", "146", 61),
    ("Rotavirus", "119", 61),
    ("Neumocócica conjugada", "133", 61),
    ("Hexavalente", "146", 122),
    ("Rotavirus", "119", 122),
    ("Neumocócica conjugada", "133", 365),
    ("Hexavalente", "146", 183),
    ("Influenza", "141", 183),
    ("SRP (triple viral)", "03", 365),
    ("SRP (triple viral)", "03", 548),
    ("Hexavalente", "146", 548),
    ("DPT", "01", 1461),
    ("VPH", "165", 4018),
]


@dataclass
class Write:
    """Resources written together, by one institution's unit at one moment."""

    institution: str
    unit: str | None
    user: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    #: A workflow step: (type, id, version) of the resource this write brings to that version; a loader
    #: skips the write when the stored resource is already there (a Task never goes back a state).
    step: tuple[str, str, int] | None = None


def _ref(resource: dict[str, Any]) -> dict[str, str]:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def _vital(pid: str, enc: str, code: str, display: str, value: float, unit: str, when: str, n: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"{enc}-obs{n}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory" if code == "2339-0" else "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{enc}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": round(value, 1), "unit": unit, "system": UCUM, "code": unit},
    }


def _infrastructure() -> Write:
    write = Write("ehr-core", None, "demo-admin")
    for code, name in ORGANIZATIONS.items():
        write.resources.append(
            {
                "resourceType": "Organization",
                "id": code.lower(),
                "identifier": [{"system": INSTITUTION_SYSTEM, "value": code}],
                "name": name,
                "active": True,
            }
        )
    for unit in UNITS:
        write.resources.append(
            {
                "resourceType": "Location",
                "id": unit.clues.lower(),
                "identifier": [{"system": CLUES_SYSTEM, "value": unit.clues}],
                "status": "active",
                "name": unit.name,
                "address": {"state": unit.clues[:2], "country": "MX"},
                "managingOrganization": {"reference": f"Organization/{unit.institution.lower()}"},
            }
        )
    return write


def _age(person: Person, when: date) -> float:
    return (when - person.birth_date).days / 365.25


def _encounter(
    rng: random.Random,
    person: Person,
    pid: str,
    unit: Unit,
    when: datetime,
    n: int,
    chronic: list[tuple[str, str, str | None]],
) -> Write:
    stamp = when.strftime("%Y-%m-%dT%H:%M:00-06:00")
    write = Write(unit.institution, unit.clues, f"med-{unit.clues[-3:]}-{rng.randrange(20)}")
    eid = f"{pid}-e{n}"
    encounter = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB" if unit.level == 1 else rng.choice(["AMB", "IMP", "EMER"]),
        },
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": stamp, "end": stamp},
        "location": [{"location": {"reference": f"Location/{unit.clues.lower()}"}}],
        "serviceProvider": {"reference": f"Organization/{unit.institution.lower()}"},
    }
    write.resources.append(encounter)
    age = _age(person, when.date())
    vitals = [
        ("8867-4", "Heart rate", rng.gauss(78, 9), "/min"),
        ("8310-5", "Body temperature", rng.gauss(36.7, 0.4), "Cel"),
        ("29463-7", "Body weight", max(3.0, min(age * 3 + 3, rng.gauss(72, 12))), "kg"),
    ]
    if age >= 10:
        vitals += [
            ("8480-6", "Systolic blood pressure", rng.gauss(125, 14), "mm[Hg]"),
            ("8462-4", "Diastolic blood pressure", rng.gauss(80, 9), "mm[Hg]"),
            ("59408-5", "Oxygen saturation", rng.gauss(96, 1.5), "%"),
        ]
    if any(c[0] == "E11.9" for c in chronic):
        vitals.append(("2339-0", "Glucose", rng.gauss(165, 35), "mg/dL"))
    for i, (code, display, value, unit_code) in enumerate(vitals):
        write.resources.append(_vital(pid, eid, code, display, value, unit_code, stamp, i))
    problems = list(chronic) if chronic and rng.random() < 0.7 else []
    if rng.random() < 0.6:
        problems.append(rng.choice(ACUTE))
    for i, (code, display, drug) in enumerate(problems[:3]):
        write.resources.append(
            {
                "resourceType": "Condition",
                "id": f"{eid}-c{i}",
                "clinicalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
                },
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                "code": "encounter-diagnosis",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": ICD10, "code": code, "display": display}], "text": display},
                "subject": {"reference": f"Patient/{pid}"},
                "encounter": {"reference": f"Encounter/{eid}"},
                "recordedDate": stamp,
            }
        )
        if drug:
            write.resources.append(
                {
                    "resourceType": "MedicationRequest",
                    "id": f"{eid}-m{i}",
                    "status": "active" if (code, display, drug) in chronic else "completed",
                    "intent": "order",
                    "medicationCodeableConcept": {"text": drug},
                    "subject": {"reference": f"Patient/{pid}"},
                    "encounter": {"reference": f"Encounter/{eid}"},
                    "authoredOn": stamp,
                    "reasonReference": [{"reference": f"Condition/{eid}-c{i}"}],
                }
            )
    return write


def population(people: int = 300, seed: int = 2024, years: tuple[int, int] = (2019, 2025)) -> Iterator[Write]:
    """Every write of the demo, in order; the same seed gives the same population, ids included."""
    rng = random.Random(seed)
    yield _infrastructure()
    first, last = datetime(years[0], 1, 1, 8), datetime(years[1], 10, 31, 18)
    span = int((last - first).total_seconds() // 60)
    by_institution = {name: [u for u in UNITS if u.institution == name] for name in ORGANIZATIONS}
    for person in make_people(people, seed, start=date(1945, 1, 1), end=date(2024, 6, 30)):
        home = rng.choices(list(ORGANIZATIONS), weights=[5, 2, 4])[0]
        institutions = [home]
        if rng.random() < 0.25:
            institutions.append(rng.choice([i for i in ORGANIZATIONS if i != home]))
        chronic = [c for c in CHRONIC if rng.random() < (0.25 if _age(person, date(2024, 1, 1)) > 40 else 0.04)]
        for n, institution in enumerate(institutions):
            pid = f"{institution.split('-')[-1].lower()[:4]}-{person.key:04d}"
            unit = rng.choice(by_institution[institution])
            kinds = (
                [] if n == 0 else rng.sample(["typo", "swap-surnames", "drop-second-surname", "accents", "no-curp"], 1)
            )
            record = noisy_record(
                person, institution, f"{institution[:3]}{person.key:06d}", rng, kinds, curp_rate=0.9 if n == 0 else 0.7
            )
            registration = Write(institution, unit.clues, "registro")
            registration.resources.append(patient_resource(record, pid))
            yield registration
            visits = sorted(first + timedelta(minutes=rng.randrange(span)) for _ in range(rng.randint(2, 6)))
            for v, when in enumerate(visits):
                if when.date() < person.birth_date:
                    continue
                yield _encounter(rng, person, pid, rng.choice(by_institution[institution]), when, v, chronic)
            yield from _immunizations(person, pid, unit)
            if person.sex == "M" and 18 <= _age(person, date(2023, 1, 1)) <= 40 and rng.random() < 0.3:
                yield _pregnancy(rng, pid, unit, first + timedelta(minutes=rng.randrange(span)))
        if len(institutions) > 1 or rng.random() < 0.05:
            when = first + timedelta(minutes=rng.randrange(span))
            # A generator of its own per person: the population above stays what it was for a seed.
            sharing = random.Random(seed * 100_003 + person.key)
            yield from _consents(sharing, person, institutions, by_institution)
            yield from _referral(rng, sharing, person, institutions, by_institution, when)


def _immunizations(person: Person, pid: str, unit: Unit) -> Iterator[Write]:
    write = Write(unit.institution, unit.clues, "enfermeria")
    for i, (vaccine, cvx, days) in enumerate(SCHEDULE):
        given = person.birth_date + timedelta(days=days)
        if given < date(2019, 1, 1) or given > date(2025, 10, 31):
            continue
        write.resources.append(
            {
                "resourceType": "Immunization",
                "id": f"{pid}-i{i}",
                "status": "completed",
                "vaccineCode": {"coding": [{"system": CVX, "code": cvx}], "text": vaccine},
                "patient": {"reference": f"Patient/{pid}"},
                "occurrenceDateTime": given.isoformat(),
                "location": {"reference": f"Location/{unit.clues.lower()}"},
            }
        )
    if write.resources:
        yield write


def _pregnancy(rng: random.Random, pid: str, unit: Unit, when: datetime) -> Write:
    write = Write(unit.institution, unit.clues, "prenatal")
    write.resources.append(
        {
            "resourceType": "Condition",
            "id": f"{pid}-preg",
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "code": {
                "coding": [{"system": ICD10, "code": "Z34.9", "display": "Supervisión de embarazo normal"}],
                "text": "Embarazo",
            },
            "subject": {"reference": f"Patient/{pid}"},
            "recordedDate": when.strftime("%Y-%m-%d"),
        }
    )
    write.resources.append(
        {
            "resourceType": "Observation",
            "id": f"{pid}-preg-status",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "82810-3", "display": "Pregnancy status"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": when.strftime("%Y-%m-%d"),
            "valueCodeableConcept": {
                "coding": [{"system": "http://snomed.info/sct", "code": "77386006", "display": "Pregnant"}]
            },
        }
    )
    return write


ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
#: "Contrarreferencia: continuar control en primer nivel." (base64, the attachment of the counter-referral note)
_NOTE = "Q29udHJhcnJlZmVyZW5jaWE6IGNvbnRpbnVhciBjb250cm9sIGVuIHByaW1lciBuaXZlbC4="


def _pid(institution: str, person: Person) -> str:
    return f"{institution.split('-')[-1].lower()[:4]}-{person.key:04d}"


def _institution_reference(institution: str) -> dict[str, Any]:
    return {
        "reference": f"Organization/{institution.lower()}",
        "identifier": {"system": INSTITUTION_SYSTEM, "value": institution},
        "display": ORGANIZATIONS[institution],
    }


def _consents(
    rng: random.Random, person: Person, institutions: list[str], by_institution: dict[str, list[Unit]]
) -> Iterator[Write]:
    """Each institution holding a record of a person seen at several gives, most of the time, the patient's
    consent to share it: with the other institutions named, or with every public institution (no actor);
    some keep mental-health records (label PSY) inside the institution that recorded them."""
    if len(institutions) < 2 or rng.random() >= 0.8:
        return
    deny = rng.random() < 0.2
    everyone = rng.random() < 0.3
    for institution in institutions:
        pid = _pid(institution, person)
        unit = by_institution[institution][0]
        write = Write(institution, unit.clues, "trabajo-social")
        if deny:
            write.resources.append(
                {
                    "resourceType": "Condition",
                    "id": f"{pid}-psy",
                    "meta": {"security": [{"system": ACT_CODE, "code": "PSY", "display": "psychiatry disorder"}]},
                    "clinicalStatus": {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
                        ]
                    },
                    "code": {
                        "coding": [{"system": ICD10, "code": "F32.9", "display": "Episodio depresivo, no especificado"}]
                    },
                    "subject": {"reference": f"Patient/{pid}"},
                }
            )
        provision: dict[str, Any] = {"type": "permit", "period": {"start": "2019-01-01"}}
        if not everyone:
            provision["actor"] = [
                {
                    "role": {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
                        ]
                    },
                    "reference": _institution_reference(other),
                }
                for other in institutions
                if other != institution
            ]
        if deny:
            provision["provision"] = [
                {"type": "deny", "securityLabel": [{"system": ACT_CODE, "code": "PSY"}]},
            ]
        write.resources.append(
            {
                "resourceType": "Consent",
                "id": f"{pid}-consent",
                "status": "active",
                "scope": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
                    ]
                },
                "category": [{"coding": [{"system": LOINC, "code": "59284-0", "display": "Patient Consent"}]}],
                "patient": {"reference": f"Patient/{pid}"},
                "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
                "provision": provision,
            }
        )
        yield write


def _referral(
    population_rng: random.Random,
    rng: random.Random,
    person: Person,
    institutions: list[str],
    by_institution: dict[str, list[Unit]],
    when: datetime,
) -> Iterator[Write]:
    """A referral from the person's first institution to another, as far as it went: pending (requested),
    accepted, completed with a counter-referral, rejected or cancelled. Where it goes and from which unit
    come from the population's generator (as they always did); the rest from the person's own."""
    source = institutions[0]
    others = [i for i in ORGANIZATIONS if i != source]
    target = institutions[1] if len(institutions) > 1 else population_rng.choice(others)
    pid = _pid(source, person)
    origin = population_rng.choice(by_institution[source])
    hospital = next((u for u in by_institution[target] if u.level == 2), by_institution[target][0])
    stamp = when.strftime("%Y-%m-%dT%H:%M:00-06:00")
    write = Write(source, origin.clues, "med-referencia")
    reason = rng.choice(CHRONIC)
    request = {
        "resourceType": "ServiceRequest",
        "id": f"{pid}-ref",
        "status": "active",
        "intent": "order",
        "category": [
            {"coding": [{"system": REFERRAL_CATEGORY[0], "code": REFERRAL_CATEGORY[1], "display": "Patient referral"}]}
        ],
        "priority": rng.choice(["routine", "routine", "urgent"]),
        "code": {"text": "Referencia a segundo nivel: valoración por medicina interna"},
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": stamp,
        "requester": {"identifier": {"system": CLUES_SYSTEM, "value": origin.clues}, "display": origin.name},
        "performer": [_institution_reference(target)],
        "locationReference": [{"reference": f"Location/{hospital.clues.lower()}"}],
        "reasonCode": [{"coding": [{"system": ICD10, "code": reason[0], "display": reason[1]}]}],
    }
    write.resources.append(request)
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": f"{pid}-ref-task",
        "status": "requested",
        "intent": "order",
        "priority": request["priority"],
        "focus": _ref(request),
        "for": {"reference": f"Patient/{pid}"},
        "authoredOn": stamp,
        "requester": request["requester"],
        "owner": _institution_reference(target),
    }
    write.resources.append(task)
    write.step = ("Task", task["id"], 1)
    yield write
    outcome = rng.choices(["requested", "accepted", "completed", "rejected", "cancelled"], weights=[3, 3, 4, 1, 1])[0]
    if outcome == "requested":
        return
    if outcome == "cancelled":
        yield Write(source, origin.clues, "med-referencia", [task | {"status": "cancelled"}], ("Task", task["id"], 2))
        return
    receiving = Write(target, hospital.clues, "recepcion-referencia")
    if outcome == "rejected":
        rejected = task | {"status": "rejected", "statusReason": {"text": "Sin disponibilidad de cama"}}
        yield Write(target, hospital.clues, "recepcion-referencia", [rejected], ("Task", task["id"], 2))
        return
    receiving.resources.append(task | {"status": "accepted"})
    receiving.step = ("Task", task["id"], 2)
    yield receiving
    if outcome != "completed":
        return
    seen = when + timedelta(days=rng.randint(2, 20))
    seen_stamp = seen.strftime("%Y-%m-%dT%H:%M:00-06:00")
    done = Write(target, hospital.clues, f"med-{hospital.clues[-3:]}-{rng.randrange(20)}")
    encounter = {
        "resourceType": "Encounter",
        "id": f"{pid}-ref-enc",
        "status": "finished",
        "class": {"system": ACT_CODE, "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "basedOn": [_ref(request)],
        "period": {"start": seen_stamp, "end": seen_stamp},
        "location": [{"location": {"reference": f"Location/{hospital.clues.lower()}"}}],
        "serviceProvider": {"reference": f"Organization/{target.lower()}"},
    }
    note = {
        "resourceType": "DocumentReference",
        "id": f"{pid}-contraref",
        "status": "current",
        "type": {
            "coding": [{"system": LOINC, "code": "57133-1", "display": "Referral note"}],
            "text": "Nota de contrarreferencia",
        },
        "subject": {"reference": f"Patient/{pid}"},
        "date": seen.strftime("%Y-%m-%dT%H:%M:00-06:00"),
        "content": [{"attachment": {"contentType": "text/plain", "title": "Contrarreferencia", "data": _NOTE}}],
        "context": {"encounter": [_ref(encounter)]},
    }
    done.resources += [encounter, note]
    outputs = [
        {"type": {"text": "Encuentro de atención"}, "valueReference": _ref(encounter)},
        {"type": {"text": "Nota de contrarreferencia"}, "valueReference": _ref(note)},
    ]
    done.resources.append(task | {"status": "completed", "output": outputs})
    done.step = ("Task", task["id"], 3)
    yield done
