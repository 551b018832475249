"""The patient's consent to share, for the web view: the ``Consent`` the consent form writes, and the rows of
its history. Pure functions (no I/O).

The Consent is the one :mod:`projections.access` grants from: scope ``patient-privacy``, policy ``OPTIN``,
a ``permit`` provision naming the institutions allowed to read (``provision.actor``, identifier
``urn:ehr-core:institution``; none named: every public institution), its period, and nested ``deny``
provisions by security label for the sensitive categories that stay inside the recording institution.
Revoking sets ``status`` to ``inactive`` (R4 consent-state-codes: "The consent is terminated or replaced"),
which ends its grants at once on every read path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ehr_core.referrals import INSTITUTION_SYSTEM
from fhir_api.web.record import LOINC, source_of

__all__ = ["ACT_CODE", "SENSITIVE", "ConsentRow", "consent_resource", "consent_row"]

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
#: The sensitive categories a patient may keep inside the recording institution, as the HL7 v3 ActCode
#: information-sensitivity labels the README's access model names: mental health, HIV/AIDS, sexuality and
#: reproductive health, addictions (substance abuse).
SENSITIVE = ("PSY", "HIV", "SEX", "ETH")


def consent_resource(
    patient: str, institutions: list[str], start: str, end: str, denied: list[str], recorded: str
) -> dict[str, Any]:
    """A privacy Consent of ``Patient/patient`` sharing with ``institutions`` (empty: every one) from
    ``start`` to ``end`` (either may be empty), denying the ``denied`` sensitive categories."""
    provision: dict[str, Any] = {"type": "permit"}
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        provision["period"] = period
    if institutions:
        provision["actor"] = [
            {
                "role": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]
                },
                "reference": {
                    "reference": f"Organization/{name.lower()}",
                    "identifier": {"system": INSTITUTION_SYSTEM, "value": name},
                    "display": name,
                },
            }
            for name in institutions
        ]
    if denied:
        provision["provision"] = [
            {"type": "deny", "securityLabel": [{"system": ACT_CODE, "code": code} for code in denied]}
        ]
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": recorded,
        "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
        "provision": provision,
    }


@dataclass
class ConsentRow:
    """One Consent as the consent panel lists it."""

    consent_id: str
    patient: str
    status: str
    recorded_by: str
    recorded: str
    updated: str
    #: ``meta.versionId``: how many times it was recorded or changed (a revocation is a version)
    version: str
    start: str
    end: str
    #: the institutions it shares with; empty: every one
    institutions: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)


def _denied(provision: dict[str, Any]) -> list[str]:
    codes: list[str] = []
    for nested in provision.get("provision") or []:
        if isinstance(nested, dict):
            if nested.get("type") == "deny":
                codes += [str(label.get("code")) for label in nested.get("securityLabel") or []]
                codes += [str(c.get("code")) for c in nested.get("class") or []]
            codes += _denied(nested)
    return codes


def consent_row(consent: dict[str, Any]) -> ConsentRow:
    provision = consent.get("provision") or {}
    period = provision.get("period") or {}
    institutions = []
    for actor in provision.get("actor") or []:
        reference = (actor or {}).get("reference") or {}
        identifier = reference.get("identifier") or {}
        name = identifier.get("value") if identifier.get("system") == INSTITUTION_SYSTEM else reference.get("display")
        institutions.append(str(name or reference.get("reference") or "?"))
    return ConsentRow(
        consent_id=str(consent.get("id")),
        patient=str((consent.get("patient") or {}).get("reference") or "").removeprefix("Patient/"),
        status=str(consent.get("status") or ""),
        recorded_by=source_of(consent)[0],
        recorded=str(consent.get("dateTime") or "")[:10],
        updated=str((consent.get("meta") or {}).get("lastUpdated") or "")[:16].replace("T", " "),
        version=str((consent.get("meta") or {}).get("versionId") or ""),
        start=str(period.get("start") or ""),
        end=str(period.get("end") or ""),
        institutions=institutions,
        denied=_denied(provision),
    )
