"""Which resource types this server stores.

The server speaks FHIR R4 (4.0.1) and validates with the R4B models of ``fhir.resources``. A type is
supported when it exists in both: R4B's additions are left out because an R4 client cannot send them,
and R4's types that R4B removed (``MedicinalProduct*``, ``EffectEvidenceSynthesis``, ...) are left out
because they cannot be validated here.
"""

from __future__ import annotations

from functools import cache

from fhir.resources.R4B import fhirtypes, get_fhir_model_class
from fhir.resources.R4B.resource import Resource

__all__ = ["REMOVED_IN_R4B", "is_supported", "supported_types"]

# Types introduced by R4B (4.3.0); not part of R4 4.0.1.
_ADDED_IN_R4B = frozenset(
    {
        "AdministrableProductDefinition",
        "Citation",
        "ClinicalUseDefinition",
        "EvidenceReport",
        "Ingredient",
        "ManufacturedItemDefinition",
        "MedicinalProductDefinition",
        "NutritionProduct",
        "PackagedProductDefinition",
        "RegulatedAuthorization",
        "SubscriptionStatus",
        "SubscriptionTopic",
        "SubstanceDefinition",
    }
)

# R4 types that R4B dropped: known to a client, not storable here (answered with a clear outcome).
REMOVED_IN_R4B = frozenset(
    {
        "EffectEvidenceSynthesis",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "RiskEvidenceSynthesis",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "SubstanceSpecification",
    }
)


@cache
def supported_types() -> tuple[str, ...]:
    """All concrete resource types, sorted (as the CapabilityStatement lists them)."""
    names = []
    for attribute in dir(fhirtypes):
        if not attribute.endswith("Type"):
            continue
        name = attribute[: -len("Type")]
        try:
            model = get_fhir_model_class(name)
        except ValueError:
            continue
        if issubclass(model, Resource) and name not in {"Resource", "DomainResource"}:
            names.append(name)
    return tuple(sorted(set(names) - _ADDED_IN_R4B))


@cache
def _supported_set() -> frozenset[str]:
    return frozenset(supported_types())


def is_supported(resource_type: str) -> bool:
    return resource_type in _supported_set()
