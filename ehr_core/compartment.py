"""The patient compartment of a resource (R4 CompartmentDefinition ``patient``).

The compartment decides whose data a resource is: which patient's key encrypts it, whose
``$everything`` returns it, whose consent governs it. The table follows the R4 Patient
CompartmentDefinition, written as element paths rather than search parameters.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["patient_compartment"]

_PATHS: dict[str, tuple[str, ...]] = {
    "Account": ("subject",),
    "AdverseEvent": ("subject",),
    "AllergyIntolerance": ("patient", "recorder", "asserter"),
    "Appointment": ("participant.actor",),
    "AppointmentResponse": ("actor",),
    "Basic": ("subject", "author"),
    "BodyStructure": ("patient",),
    "CarePlan": ("subject", "activity.detail.performer"),
    "CareTeam": ("subject", "participant.member"),
    "ChargeItem": ("subject",),
    "Claim": ("patient", "payee.party"),
    "ClaimResponse": ("patient",),
    "ClinicalImpression": ("subject",),
    "Communication": ("subject", "sender", "recipient"),
    "CommunicationRequest": ("subject", "sender", "recipient", "requester"),
    "Composition": ("subject", "author", "attester.party"),
    "Condition": ("subject", "asserter"),
    "Consent": ("patient",),
    "Coverage": ("policyHolder", "subscriber", "beneficiary", "payor"),
    "CoverageEligibilityRequest": ("patient",),
    "CoverageEligibilityResponse": ("patient",),
    "DetectedIssue": ("patient",),
    "DeviceRequest": ("subject", "performer"),
    "DeviceUseStatement": ("subject",),
    "DiagnosticReport": ("subject",),
    "DocumentManifest": ("subject", "author", "recipient"),
    "DocumentReference": ("subject", "author"),
    "Encounter": ("subject",),
    "EnrollmentRequest": ("candidate",),
    "EpisodeOfCare": ("patient",),
    "ExplanationOfBenefit": ("patient", "payee.party"),
    "FamilyMemberHistory": ("patient",),
    "Flag": ("subject",),
    "Goal": ("subject",),
    "Group": ("member.entity",),
    "ImagingStudy": ("subject",),
    "Immunization": ("patient",),
    "ImmunizationEvaluation": ("patient",),
    "ImmunizationRecommendation": ("patient",),
    "Invoice": ("subject", "recipient"),
    "List": ("subject", "source"),
    "MeasureReport": ("subject",),
    "Media": ("subject",),
    "MedicationAdministration": ("subject", "performer.actor"),
    "MedicationDispense": ("subject", "receiver"),
    "MedicationRequest": ("subject",),
    "MedicationStatement": ("subject",),
    "MolecularSequence": ("patient",),
    "NutritionOrder": ("patient",),
    "Observation": ("subject", "performer"),
    "Person": ("link.target",),
    "Procedure": ("subject", "performer.actor"),
    "Provenance": ("target", "agent.who"),
    "QuestionnaireResponse": ("subject", "author"),
    "RelatedPerson": ("patient",),
    "RequestGroup": ("subject", "participant"),
    "ResearchSubject": ("individual",),
    "RiskAssessment": ("subject",),
    "Schedule": ("actor",),
    "ServiceRequest": ("subject", "performer"),
    "Specimen": ("subject",),
    "SupplyDelivery": ("patient",),
    "SupplyRequest": ("requester",),
    "VisionPrescription": ("patient",),
}


def _walk(node: Any, steps: list[str]) -> list[Any]:
    if isinstance(node, list):
        return [found for item in node for found in _walk(item, steps)]
    if not steps:
        return [node]
    if not isinstance(node, dict) or steps[0] not in node:
        return []
    return _walk(node[steps[0]], steps[1:])


def _patient_id(reference: Any) -> str | None:
    if not isinstance(reference, dict):
        return None
    target = reference.get("reference")
    if not isinstance(target, str):
        return None
    parts = target.split("/")
    # Relative (Patient/1), absolute (https://x/fhir/Patient/1) and versioned (Patient/1/_history/2).
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    # Only an R4 id (1-64 of [A-Za-z0-9-.]) can name a Patient: anything else points at no record, and would
    # become a compartment (a data key, index rows) of any length the client chose.
    if len(parts) >= 2 and parts[-2] == "Patient" and _ID.fullmatch(parts[-1]):
        return parts[-1]
    return None


_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def patient_compartment(resource: dict[str, Any]) -> list[str]:
    """Ids of the patients whose compartment holds ``resource`` (a Patient is in its own)."""
    resource_type = resource.get("resourceType")
    found: list[str] = []
    if resource_type == "Patient" and isinstance(resource.get("id"), str):
        found.append(resource["id"])
    for path in _PATHS.get(str(resource_type), ()):
        for reference in _walk(resource, path.split(".")):
            patient = _patient_id(reference)
            if patient is not None and patient not in found:
                found.append(patient)
    return found
