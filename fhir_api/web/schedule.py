"""The core vaccines of Mexico's national vaccination schedule (Cartilla Nacional de Salud), for the
immunization card.

No schedule data existed in the project beyond what the demo generator uses to write Immunizations
(``ehr_core/demo/population.py``), so the card defines its own here, from DOMAIN.md: BCG and hepatitis B at
birth; hexavalent at 2, 4, 6 and 18 months; pneumococcal conjugate at 2, 4 and 12 months; rotavirus at 2
and 4 months; influenza from 6 months; MMR (SRP) at 12 and 18 months; DPT at 4 years; HPV at 11 years.
Vaccines are matched by their CVX code (``http://hl7.org/fhir/sid/cvx``), the system the demo and most
FHIR senders use; a dose is the n-th administration of that vaccine, in date order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CVX", "SCHEDULE", "Dose"]

CVX = "http://hl7.org/fhir/sid/cvx"


@dataclass(frozen=True)
class Dose:
    vaccine_es: str
    vaccine_en: str
    #: CVX codes that count as this vaccine
    cvx: tuple[str, ...]
    #: which dose of the vaccine (1-based)
    number: int
    #: age at which it is due, in days
    age_days: int
    age_es: str
    age_en: str


def _dose(es: str, en: str, cvx: tuple[str, ...], number: int, days: int, age_es: str, age_en: str) -> Dose:
    return Dose(es, en, cvx, number, days, age_es, age_en)


SCHEDULE: tuple[Dose, ...] = (
    _dose("BCG", "BCG", ("19",), 1, 0, "Al nacer", "At birth"),
    _dose("Hepatitis B", "Hepatitis B", ("08", "45"), 1, 0, "Al nacer", "At birth"),
    _dose("Hexavalente", "Hexavalent", ("146",), 1, 61, "2 meses", "2 months"),
    _dose("Rotavirus", "Rotavirus", ("119", "116", "122"), 1, 61, "2 meses", "2 months"),
    _dose("Neumocócica conjugada", "Pneumococcal conjugate", ("133", "152"), 1, 61, "2 meses", "2 months"),
    _dose("Hexavalente", "Hexavalent", ("146",), 2, 122, "4 meses", "4 months"),
    _dose("Rotavirus", "Rotavirus", ("119", "116", "122"), 2, 122, "4 meses", "4 months"),
    _dose("Neumocócica conjugada", "Pneumococcal conjugate", ("133", "152"), 2, 122, "4 meses", "4 months"),
    _dose("Hexavalente", "Hexavalent", ("146",), 3, 183, "6 meses", "6 months"),
    _dose("Influenza", "Influenza", ("141", "140", "150", "158"), 1, 183, "6 meses", "6 months"),
    _dose("Neumocócica conjugada", "Pneumococcal conjugate", ("133", "152"), 3, 365, "12 meses", "12 months"),
    _dose("SRP (triple viral)", "MMR", ("03",), 1, 365, "12 meses", "12 months"),
    _dose("SRP (triple viral)", "MMR", ("03",), 2, 548, "18 meses", "18 months"),
    _dose("Hexavalente", "Hexavalent", ("146",), 4, 548, "18 meses", "18 months"),
    _dose("DPT", "DTP", ("01", "20", "107"), 1, 1461, "4 años", "4 years"),
    _dose("VPH", "HPV", ("165", "62", "118"), 1, 4018, "11 años", "11 years"),
)
