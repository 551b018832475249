# ruff: noqa: E501 - the spec's expressions are kept verbatim, one parameter per line
"""The search parameters this server supports: code, type and FHIRPath expression as R4 defines them.

Transcribed from the FHIR R4 (4.0.1) search parameter registry (``search-parameters.json``, each
resource page's "Search Parameters" table), keeping the spec's expressions verbatim so they can be
checked against a FHIRPath engine (see ``tests/unit/search/test_paths.py``). Composite parameters and
the special ones (``Location.near``, ``phonetic``, ``_text``, ``_content``, ``_list``, ``_query``) are not
here: this server does not support them, and the CapabilityStatement says so by leaving them out.

One line per parameter: ``code type expression``.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["COMMON", "DEFINITIONS", "ParamType"]

ParamType = str  # "token" | "string" | "date" | "reference" | "quantity" | "number" | "uri"

# R4 §3.1.1.5 "Parameters for all resources" (the base Resource's parameters).
_COMMON = """
_id token Resource.id
_lastUpdated date Resource.meta.lastUpdated
_tag token Resource.meta.tag
_profile uri Resource.meta.profile
_security token Resource.meta.security
_source uri Resource.meta.source
"""

_TABLES: dict[str, str] = {
    "Patient": """
active token Patient.active
address string Patient.address
address-city string Patient.address.city
address-country string Patient.address.country
address-postalcode string Patient.address.postalCode
address-state string Patient.address.state
address-use token Patient.address.use
birthdate date Patient.birthDate
death-date date (Patient.deceased as dateTime)
deceased token Patient.deceased.exists() and Patient.deceased != false
email token Patient.telecom.where(system='email')
family string Patient.name.family
gender token Patient.gender
general-practitioner reference Patient.generalPractitioner
given string Patient.name.given
identifier token Patient.identifier
language token Patient.communication.language
link reference Patient.link.other
name string Patient.name
organization reference Patient.managingOrganization
phone token Patient.telecom.where(system='phone')
telecom token Patient.telecom
""",
    "Practitioner": """
active token Practitioner.active
address string Practitioner.address
address-city string Practitioner.address.city
address-country string Practitioner.address.country
address-postalcode string Practitioner.address.postalCode
address-state string Practitioner.address.state
address-use token Practitioner.address.use
communication token Practitioner.communication
email token Practitioner.telecom.where(system='email')
family string Practitioner.name.family
gender token Practitioner.gender
given string Practitioner.name.given
identifier token Practitioner.identifier
name string Practitioner.name
phone token Practitioner.telecom.where(system='phone')
telecom token Practitioner.telecom
""",
    "PractitionerRole": """
active token PractitionerRole.active
date date PractitionerRole.period
email token PractitionerRole.telecom.where(system='email')
endpoint reference PractitionerRole.endpoint
identifier token PractitionerRole.identifier
location reference PractitionerRole.location
organization reference PractitionerRole.organization
phone token PractitionerRole.telecom.where(system='phone')
practitioner reference PractitionerRole.practitioner
role token PractitionerRole.code
service reference PractitionerRole.healthcareService
specialty token PractitionerRole.specialty
telecom token PractitionerRole.telecom
""",
    "Organization": """
active token Organization.active
address string Organization.address
address-city string Organization.address.city
address-country string Organization.address.country
address-postalcode string Organization.address.postalCode
address-state string Organization.address.state
address-use token Organization.address.use
endpoint reference Organization.endpoint
identifier token Organization.identifier
name string Organization.name | Organization.alias
partof reference Organization.partOf
type token Organization.type
""",
    "Location": """
address string Location.address
address-city string Location.address.city
address-country string Location.address.country
address-postalcode string Location.address.postalCode
address-state string Location.address.state
address-use token Location.address.use
endpoint reference Location.endpoint
identifier token Location.identifier
name string Location.name | Location.alias
operational-status token Location.operationalStatus
organization reference Location.managingOrganization
partof reference Location.partOf
status token Location.status
type token Location.type
""",
    "Encounter": """
account reference Encounter.account
appointment reference Encounter.appointment
based-on reference Encounter.basedOn
class token Encounter.class
date date Encounter.period
diagnosis reference Encounter.diagnosis.condition
episode-of-care reference Encounter.episodeOfCare
identifier token Encounter.identifier
length quantity Encounter.length
location reference Encounter.location.location
location-period date Encounter.location.period
part-of reference Encounter.partOf
participant reference Encounter.participant.individual
participant-type token Encounter.participant.type
patient reference Encounter.subject.where(resolve() is Patient)
practitioner reference Encounter.participant.individual.where(resolve() is Practitioner)
reason-code token Encounter.reasonCode
reason-reference reference Encounter.reasonReference
service-provider reference Encounter.serviceProvider
special-arrangement token Encounter.hospitalization.specialArrangement
status token Encounter.status
subject reference Encounter.subject
type token Encounter.type
""",
    "Condition": """
abatement-age quantity Condition.abatement.as(Age) | Condition.abatement.as(Range)
abatement-date date Condition.abatement.as(dateTime) | Condition.abatement.as(Period)
abatement-string string Condition.abatement.as(string)
asserter reference Condition.asserter
body-site token Condition.bodySite
category token Condition.category
clinical-status token Condition.clinicalStatus
code token Condition.code
encounter reference Condition.encounter
evidence token Condition.evidence.code
evidence-detail reference Condition.evidence.detail
identifier token Condition.identifier
onset-age quantity Condition.onset.as(Age) | Condition.onset.as(Range)
onset-date date Condition.onset.as(dateTime) | Condition.onset.as(Period)
onset-info string Condition.onset.as(string)
patient reference Condition.subject.where(resolve() is Patient)
recorded-date date Condition.recordedDate
severity token Condition.severity
stage token Condition.stage.summary
subject reference Condition.subject
verification-status token Condition.verificationStatus
""",
    "Observation": """
based-on reference Observation.basedOn
category token Observation.category
code token Observation.code
combo-code token Observation.code | Observation.component.code
combo-data-absent-reason token Observation.dataAbsentReason | Observation.component.dataAbsentReason
combo-value-concept token (Observation.value as CodeableConcept) | (Observation.component.value as CodeableConcept)
combo-value-quantity quantity (Observation.value as Quantity) | (Observation.value as SampledData) | (Observation.component.value as Quantity) | (Observation.component.value as SampledData)
component-code token Observation.component.code
component-data-absent-reason token Observation.component.dataAbsentReason
component-value-concept token (Observation.component.value as CodeableConcept)
component-value-quantity quantity (Observation.component.value as Quantity) | (Observation.component.value as SampledData)
data-absent-reason token Observation.dataAbsentReason
date date Observation.effective
derived-from reference Observation.derivedFrom
device reference Observation.device
encounter reference Observation.encounter
focus reference Observation.focus
has-member reference Observation.hasMember
identifier token Observation.identifier
method token Observation.method
part-of reference Observation.partOf
patient reference Observation.subject.where(resolve() is Patient)
performer reference Observation.performer
specimen reference Observation.specimen
status token Observation.status
subject reference Observation.subject
value-concept token (Observation.value as CodeableConcept)
value-date date (Observation.value as dateTime) | (Observation.value as Period)
value-quantity quantity (Observation.value as Quantity) | (Observation.value as SampledData)
value-string string (Observation.value as string)
""",
    "MedicationRequest": """
authoredon date MedicationRequest.authoredOn
category token MedicationRequest.category
code token (MedicationRequest.medication as CodeableConcept)
date date MedicationRequest.dosageInstruction.timing.event
encounter reference MedicationRequest.encounter
identifier token MedicationRequest.identifier
intended-dispenser reference MedicationRequest.dispenseRequest.performer
intended-performer reference MedicationRequest.performer
intended-performertype token MedicationRequest.performerType
intent token MedicationRequest.intent
medication reference (MedicationRequest.medication as Reference)
patient reference MedicationRequest.subject.where(resolve() is Patient)
priority token MedicationRequest.priority
requester reference MedicationRequest.requester
status token MedicationRequest.status
subject reference MedicationRequest.subject
""",
    "MedicationStatement": """
category token MedicationStatement.category
code token (MedicationStatement.medication as CodeableConcept)
context reference MedicationStatement.context
effective date MedicationStatement.effective
identifier token MedicationStatement.identifier
medication reference (MedicationStatement.medication as Reference)
part-of reference MedicationStatement.partOf
patient reference MedicationStatement.subject.where(resolve() is Patient)
source reference MedicationStatement.informationSource
status token MedicationStatement.status
subject reference MedicationStatement.subject
""",
    "Procedure": """
based-on reference Procedure.basedOn
category token Procedure.category
code token Procedure.code
date date Procedure.performed
encounter reference Procedure.encounter
identifier token Procedure.identifier
instantiates-canonical reference Procedure.instantiatesCanonical
instantiates-uri uri Procedure.instantiatesUri
location reference Procedure.location
part-of reference Procedure.partOf
patient reference Procedure.subject.where(resolve() is Patient)
performer reference Procedure.performer.actor
reason-code token Procedure.reasonCode
reason-reference reference Procedure.reasonReference
status token Procedure.status
subject reference Procedure.subject
""",
    "Immunization": """
date date Immunization.occurrence
identifier token Immunization.identifier
location reference Immunization.location
lot-number string Immunization.lotNumber
manufacturer reference Immunization.manufacturer
patient reference Immunization.patient
performer reference Immunization.performer.actor
reaction reference Immunization.reaction.detail
reaction-date date Immunization.reaction.date
reason-code token Immunization.reasonCode
reason-reference reference Immunization.reasonReference
series string Immunization.protocolApplied.series
status token Immunization.status
status-reason token Immunization.statusReason
target-disease token Immunization.protocolApplied.targetDisease
vaccine-code token Immunization.vaccineCode
""",
    "AllergyIntolerance": """
asserter reference AllergyIntolerance.asserter
category token AllergyIntolerance.category
clinical-status token AllergyIntolerance.clinicalStatus
code token AllergyIntolerance.code | AllergyIntolerance.reaction.substance
criticality token AllergyIntolerance.criticality
date date AllergyIntolerance.recordedDate
identifier token AllergyIntolerance.identifier
last-date date AllergyIntolerance.lastOccurrence
manifestation token AllergyIntolerance.reaction.manifestation
onset date AllergyIntolerance.reaction.onset
patient reference AllergyIntolerance.patient
recorder reference AllergyIntolerance.recorder
route token AllergyIntolerance.reaction.exposureRoute
severity token AllergyIntolerance.reaction.severity
type token AllergyIntolerance.type
verification-status token AllergyIntolerance.verificationStatus
""",
    "DiagnosticReport": """
based-on reference DiagnosticReport.basedOn
category token DiagnosticReport.category
code token DiagnosticReport.code
conclusion token DiagnosticReport.conclusionCode
date date DiagnosticReport.effective
encounter reference DiagnosticReport.encounter
identifier token DiagnosticReport.identifier
issued date DiagnosticReport.issued
media reference DiagnosticReport.media.link
patient reference DiagnosticReport.subject.where(resolve() is Patient)
performer reference DiagnosticReport.performer
result reference DiagnosticReport.result
results-interpreter reference DiagnosticReport.resultsInterpreter
specimen reference DiagnosticReport.specimen
status token DiagnosticReport.status
subject reference DiagnosticReport.subject
""",
    "ServiceRequest": """
authored date ServiceRequest.authoredOn
based-on reference ServiceRequest.basedOn
body-site token ServiceRequest.bodySite
category token ServiceRequest.category
code token ServiceRequest.code
encounter reference ServiceRequest.encounter
identifier token ServiceRequest.identifier
instantiates-canonical reference ServiceRequest.instantiatesCanonical
instantiates-uri uri ServiceRequest.instantiatesUri
intent token ServiceRequest.intent
occurrence date ServiceRequest.occurrence
patient reference ServiceRequest.subject.where(resolve() is Patient)
performer reference ServiceRequest.performer
performer-type token ServiceRequest.performerType
priority token ServiceRequest.priority
replaces reference ServiceRequest.replaces
requester reference ServiceRequest.requester
requisition token ServiceRequest.requisition
specimen reference ServiceRequest.specimen
status token ServiceRequest.status
subject reference ServiceRequest.subject
""",
    "Task": """
authored-on date Task.authoredOn
based-on reference Task.basedOn
business-status token Task.businessStatus
code token Task.code
encounter reference Task.encounter
focus reference Task.focus
group-identifier token Task.groupIdentifier
identifier token Task.identifier
intent token Task.intent
modified date Task.lastModified
owner reference Task.owner
part-of reference Task.partOf
patient reference Task.for.where(resolve() is Patient)
performer token Task.performerType
period date Task.executionPeriod
priority token Task.priority
requester reference Task.requester
status token Task.status
subject reference Task.for
""",
    "Consent": """
action token Consent.provision.action
actor reference Consent.provision.actor.reference
category token Consent.category
consentor reference Consent.performer
data reference Consent.provision.data.reference
date date Consent.dateTime
identifier token Consent.identifier
organization reference Consent.organization
patient reference Consent.patient
period date Consent.provision.period
purpose token Consent.provision.purpose
scope token Consent.scope
security-label token Consent.provision.securityLabel
source-reference reference Consent.source
status token Consent.status
""",
    "Provenance": """
agent reference Provenance.agent.who
agent-role token Provenance.agent.role
agent-type token Provenance.agent.type
entity reference Provenance.entity.what
location reference Provenance.location
patient reference Provenance.target.where(resolve() is Patient)
recorded date Provenance.recorded
signature-type token Provenance.signature.type
target reference Provenance.target
when date (Provenance.occurred as dateTime)
""",
    "AuditEvent": """
action token AuditEvent.action
address string AuditEvent.agent.network.address
agent reference AuditEvent.agent.who
agent-name string AuditEvent.agent.name
agent-role token AuditEvent.agent.role
altid token AuditEvent.agent.altId
date date AuditEvent.recorded
entity reference AuditEvent.entity.what
entity-name string AuditEvent.entity.name
entity-role token AuditEvent.entity.role
entity-type token AuditEvent.entity.type
outcome token AuditEvent.outcome
patient reference AuditEvent.agent.who.where(resolve() is Patient) | AuditEvent.entity.what.where(resolve() is Patient)
policy uri AuditEvent.agent.policy
site token AuditEvent.source.site
source reference AuditEvent.source.observer
subtype token AuditEvent.subtype
type token AuditEvent.type
""",
    "DocumentReference": """
authenticator reference DocumentReference.authenticator
author reference DocumentReference.author
category token DocumentReference.category
contenttype token DocumentReference.content.attachment.contentType
custodian reference DocumentReference.custodian
date date DocumentReference.date
description string DocumentReference.description
encounter reference DocumentReference.context.encounter
event token DocumentReference.context.event
facility token DocumentReference.context.facilityType
format token DocumentReference.content.format
identifier token DocumentReference.masterIdentifier | DocumentReference.identifier
language token DocumentReference.content.attachment.language
location uri DocumentReference.content.attachment.url
patient reference DocumentReference.subject.where(resolve() is Patient)
period date DocumentReference.context.period
related reference DocumentReference.context.related
relatesto reference DocumentReference.relatesTo.target
relation token DocumentReference.relatesTo.code
security-label token DocumentReference.securityLabel
setting token DocumentReference.context.practiceSetting
status token DocumentReference.status
subject reference DocumentReference.subject
type token DocumentReference.type
""",
    "CarePlan": """
activity-code token CarePlan.activity.detail.code
activity-date date CarePlan.activity.detail.scheduled
activity-reference reference CarePlan.activity.reference
based-on reference CarePlan.basedOn
care-team reference CarePlan.careTeam
category token CarePlan.category
condition reference CarePlan.addresses
date date CarePlan.period
encounter reference CarePlan.encounter
goal reference CarePlan.goal
identifier token CarePlan.identifier
instantiates-canonical reference CarePlan.instantiatesCanonical
instantiates-uri uri CarePlan.instantiatesUri
intent token CarePlan.intent
part-of reference CarePlan.partOf
patient reference CarePlan.subject.where(resolve() is Patient)
performer reference CarePlan.activity.detail.performer
replaces reference CarePlan.replaces
status token CarePlan.status
subject reference CarePlan.subject
""",
    "Composition": """
attester reference Composition.attester.party
author reference Composition.author
category token Composition.category
confidentiality token Composition.confidentiality
context token Composition.event.code
date date Composition.date
encounter reference Composition.encounter
entry reference Composition.section.entry
identifier token Composition.identifier
patient reference Composition.subject.where(resolve() is Patient)
period date Composition.event.period
related-id token (Composition.relatesTo.target as Identifier)
related-ref reference (Composition.relatesTo.target as Reference)
section token Composition.section.code
status token Composition.status
subject reference Composition.subject
title string Composition.title
type token Composition.type
""",
    # Beyond the list: the types the Synthea corpus holds, so _revinclude and chains reach them,
    # and RiskAssessment for a ``number`` parameter.
    "RiskAssessment": """
condition reference RiskAssessment.condition
date date (RiskAssessment.occurrence as dateTime)
encounter reference RiskAssessment.encounter
identifier token RiskAssessment.identifier
method token RiskAssessment.method
patient reference RiskAssessment.subject.where(resolve() is Patient)
performer reference RiskAssessment.performer
probability number RiskAssessment.prediction.probability
risk token RiskAssessment.prediction.qualitativeRisk
subject reference RiskAssessment.subject
""",
    "CareTeam": """
category token CareTeam.category
date date CareTeam.period
encounter reference CareTeam.encounter
identifier token CareTeam.identifier
participant reference CareTeam.participant.member
patient reference CareTeam.subject.where(resolve() is Patient)
status token CareTeam.status
subject reference CareTeam.subject
""",
    "Goal": """
achievement-status token Goal.achievementStatus
category token Goal.category
identifier token Goal.identifier
lifecycle-status token Goal.lifecycleStatus
patient reference Goal.subject.where(resolve() is Patient)
start-date date (Goal.start as date)
subject reference Goal.subject
target-date date (Goal.target.due as date)
""",
    "Claim": """
care-team reference Claim.careTeam.provider
created date Claim.created
encounter reference Claim.item.encounter
enterer reference Claim.enterer
facility reference Claim.facility
identifier token Claim.identifier
insurer reference Claim.insurer
patient reference Claim.patient
payee reference Claim.payee.party
priority token Claim.priority
provider reference Claim.provider
status token Claim.status
use token Claim.use
""",
    "ExplanationOfBenefit": """
care-team reference ExplanationOfBenefit.careTeam.provider
claim reference ExplanationOfBenefit.claim
coverage reference ExplanationOfBenefit.insurance.coverage
created date ExplanationOfBenefit.created
disposition string ExplanationOfBenefit.disposition
encounter reference ExplanationOfBenefit.item.encounter
enterer reference ExplanationOfBenefit.enterer
facility reference ExplanationOfBenefit.facility
identifier token ExplanationOfBenefit.identifier
patient reference ExplanationOfBenefit.patient
payee reference ExplanationOfBenefit.payee.party
provider reference ExplanationOfBenefit.provider
status token ExplanationOfBenefit.status
""",
    "Medication": """
code token Medication.code
expiration-date date Medication.batch.expirationDate
form token Medication.form
identifier token Medication.identifier
ingredient reference (Medication.ingredient.item as Reference)
ingredient-code token (Medication.ingredient.item as CodeableConcept)
lot-number token Medication.batch.lotNumber
manufacturer reference Medication.manufacturer
status token Medication.status
""",
}


def _parse(text: str) -> tuple[tuple[str, ParamType, str], ...]:
    rows = []
    for line in text.strip().splitlines():
        code, kind, expression = line.split(" ", 2)
        rows.append((code, kind, expression))
    return tuple(rows)


#: The common parameters, on every resource type.
COMMON: tuple[tuple[str, ParamType, str], ...] = _parse(_COMMON)

#: Per resource type: its own parameters (the common ones are added by :mod:`projections.search.registry`).
DEFINITIONS = MappingProxyType({resource_type: _parse(text) for resource_type, text in _TABLES.items()})
