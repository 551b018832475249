"""The operations this server offers, each described once: its OperationDefinition (R4 operationdefinition.html),
the parameters its handlers accept (:mod:`fhir_api.operations.parameters` reads requests against them), and
what the CapabilityStatement lists (``rest.operation`` and ``rest.resource.operation``).

Each definition is served at ``GET [base]/OperationDefinition/[id]``; where HL7 or IHE publish the operation,
``base`` names their definition, of which this one is the server's own narrowing (R4 §2.38 "Implementing an
operation": a server publishes the parameters it actually supports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ehr_core.resources.types import supported_types

__all__ = [
    "OPERATIONS",
    "TERMINOLOGY_OPERATIONS",
    "Operation",
    "Param",
    "by_id",
    "definition_resource",
    "operations_for",
]


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    min: int = 0
    max: str = "1"
    use: str = "in"
    documentation: str = ""
    #: The search type of a string-valued parameter that is used like a search parameter (R4: searchType).
    search_type: str | None = None
    #: The parts of a parameter made of parts (R4 OperationDefinition.parameter.part): it then has no type.
    parts: tuple[Param, ...] = ()

    @property
    def repeats(self) -> bool:
        return self.max != "1"


@dataclass(frozen=True)
class Operation:
    id: str
    code: str
    name: str
    description: str
    #: Types it is invoked on (empty: system level only).
    resource: tuple[str, ...] = ()
    system: bool = False
    type: bool = False
    instance: bool = False
    affects_state: bool = False
    parameters: tuple[Param, ...] = ()
    base: str | None = None
    #: POST only: it changes state, or takes a resource (R4 operations.html "Executing an operation": GET is
    #: allowed only when the operation affects no state and every parameter is a primitive).
    post_only: bool = False
    outputs: tuple[Param, ...] = field(default_factory=tuple)

    @property
    def in_parameters(self) -> dict[str, Param]:
        return {p.name: p for p in self.parameters if p.use == "in"}


_COUNT = Param("_count", "integer", documentation="Page size of the answer (the server caps it at 1000)")
_EVERYTHING_PAGE = Param(
    "_page_after",
    "integer",
    documentation="Server paging cursor (a notification id): use the Bundle's next link, never build it",
)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "everything",
        "everything",
        "PatientEverything",
        "Every resource of the patient's unified record (all records the master patient index links to this "
        "one), plus the resources they reference, each attributed to its institution in meta.source.",
        resource=("Patient",),
        instance=True,
        base="http://hl7.org/fhir/OperationDefinition/Patient-everything",
        parameters=(
            Param("start", "date", documentation="Care date range start, inclusive (each resource's clinical date)"),
            Param("end", "date", documentation="Care date range end, inclusive (each resource's clinical date)"),
            Param("_since", "instant", documentation="Only resources last updated at or after this instant"),
            Param("_type", "code", max="*", documentation="Resource types to include (comma-separated or repeated)"),
            _COUNT,
            _EVERYTHING_PAGE,
            Param("_at", "instant", documentation="The record as it was at this recorded instant"),
        ),
        outputs=(Param("return", "Bundle", min=1, use="out", documentation="A searchset Bundle"),),
    ),
    Operation(
        "summary",
        "summary",
        "PatientSummary",
        "An International Patient Summary document of the unified record.",
        resource=("Patient",),
        instance=True,
        base="http://hl7.org/fhir/uv/ips/OperationDefinition/summary",
        outputs=(Param("return", "Bundle", min=1, use="out", documentation="An IPS document Bundle"),),
    ),
    Operation(
        "match",
        "match",
        "PatientMatch",
        "PDQm patient matching (ITI-119) against the master patient index.",
        resource=("Patient",),
        type=True,
        base="http://hl7.org/fhir/OperationDefinition/Patient-match",
        post_only=True,
        parameters=(
            Param("resource", "Patient", min=1, documentation="The patient to match"),
            Param("onlyCertainMatches", "boolean"),
            Param("count", "integer"),
        ),
        outputs=(Param("return", "Bundle", min=1, use="out", documentation="A searchset Bundle with scores"),),
    ),
    Operation(
        "ihe-pix",
        "ihe-pix",
        "PatientIhePix",
        "PIXm (ITI-83): the identifiers and records of the same person across institutions.",
        resource=("Patient",),
        type=True,
        base="https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix",
        parameters=(
            Param("sourceIdentifier", "Identifier", min=1, search_type="token", documentation="system|value"),
            Param("targetSystem", "uri", max="*"),
        ),
        outputs=(
            Param("targetIdentifier", "Identifier", max="*", use="out"),
            Param("targetId", "Reference", max="*", use="out"),
        ),
    ),
    Operation(
        "access-grants",
        "access-grants",
        "PatientAccessGrants",
        "Who may read this Patient record besides the institution that recorded it, why and until when: each "
        "grant (an active Consent naming an institution, or every institution; an accepted referral Task for its "
        "receiving institution) with its period, and each deny provision that keeps resources inside the "
        "institution that recorded them.",
        resource=("Patient",),
        instance=True,
        outputs=(
            Param(
                "grant",
                "",
                max="*",
                use="out",
                documentation="Who may read the record, why (a Consent or a referral Task) and until when",
                parts=(
                    Param("patient", "Reference", min=1, use="out"),
                    Param("institution", "string", min=1, use="out", documentation="* is every institution"),
                    Param("basis", "code", min=1, use="out", documentation="consent or referral"),
                    Param("source", "Reference", min=1, use="out"),
                    Param("start", "string", use="out"),
                    Param("end", "string", use="out"),
                    Param("active", "boolean", min=1, use="out"),
                ),
            ),
            Param(
                "denial",
                "",
                max="*",
                use="out",
                documentation="A deny provision: what stays inside the institution that recorded it",
                parts=(
                    Param("patient", "Reference", min=1, use="out"),
                    Param("institution", "string", min=1, use="out"),
                    Param("source", "Reference", min=1, use="out"),
                    Param("kind", "code", min=1, use="out", documentation="class, code or _security"),
                    Param("system", "uri", use="out"),
                    Param("code", "code", min=1, use="out"),
                ),
            ),
        ),
    ),
    Operation(
        "person",
        "person",
        "PatientPerson",
        "The golden record (Person) of the master patient index holding this Patient record.",
        resource=("Patient",),
        instance=True,
        outputs=(Param("return", "Person", min=1, use="out"),),
    ),
    Operation(
        "link",
        "link",
        "PatientLink",
        "A data steward links this Patient record to a person: other (a Patient of that person) or person.",
        resource=("Patient",),
        instance=True,
        affects_state=True,
        post_only=True,
        parameters=(Param("other", "Reference"), Param("person", "string")),
        outputs=(Param("return", "Person", min=1, use="out"),),
    ),
    Operation(
        "unlink",
        "unlink",
        "PatientUnlink",
        "A data steward undoes the link of this Patient record; it is never re-linked to that person automatically.",
        resource=("Patient",),
        instance=True,
        affects_state=True,
        post_only=True,
        outputs=(Param("return", "Person", min=1, use="out"),),
    ),
    Operation(
        "review",
        "review",
        "PersonReview",
        "The master patient index's review queue of possible matches the caller may read.",
        resource=("Person",),
        type=True,
        outputs=(Param("return", "Parameters", min=1, use="out"),),
    ),
    Operation(
        "export",
        "export",
        "Export",
        "Bulk Data system-level export (Prefer: respond-async).",
        system=True,
        base="http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
        parameters=(
            Param("_outputFormat", "string"),
            Param("_since", "instant"),
            Param("_type", "string", max="*"),
            Param("_typeFilter", "string", max="*", documentation="Type?search: only the resources it finds"),
        ),
    ),
    Operation(
        "patient-export",
        "export",
        "PatientExport",
        "Bulk Data export of every patient's compartment, or of the patients named (POST).",
        resource=("Patient",),
        type=True,
        base="http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
        parameters=(
            Param("_outputFormat", "string"),
            Param("_since", "instant"),
            Param("_type", "string", max="*"),
            Param("_typeFilter", "string", max="*", documentation="Type?search: only the resources it finds"),
            Param("patient", "Reference", max="*", documentation="Only these patients (POST only)"),
        ),
    ),
    Operation(
        "group-export",
        "export",
        "GroupExport",
        "Bulk Data export of a Group's member patients.",
        resource=("Group",),
        instance=True,
        base="http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
        parameters=(
            Param("_outputFormat", "string"),
            Param("_since", "instant"),
            Param("_type", "string", max="*"),
            Param("_typeFilter", "string", max="*", documentation="Type?search: only the resources it finds"),
        ),
    ),
    Operation(
        "import",
        "import",
        "Import",
        "Bulk import of NDJSON files from the server's import directory (file:// URLs under EHR_IMPORT_DIR), "
        "as `ehr import` loads them: resumable, in dependency order, conditional references resolved, each line "
        "written as the caller's institution. Asynchronous: 202 and Content-Location of its status.",
        system=True,
        affects_state=True,
        post_only=True,
        parameters=(
            Param("inputFormat", "code", min=1, documentation="application/fhir+ndjson"),
            Param("inputSource", "uri", documentation="Where the data comes from (recorded, not fetched)"),
            Param(
                "input",
                "",
                min=1,
                max="*",
                documentation="One NDJSON file",
                parts=(
                    Param("type", "code", min=1, documentation="The resource type of its lines"),
                    Param("url", "uri", min=1, documentation="file:// URL of a .ndjson file in the import directory"),
                ),
            ),
        ),
        outputs=(
            Param(
                "return",
                "Parameters",
                use="out",
                documentation="At $import-status when complete: versions stored per type, lines rejected and why",
            ),
        ),
    ),
    Operation(
        "validate",
        "validate",
        "Validate",
        "Checks a resource as a create, update or delete would (the R4 models, required bindings, error-level"
        " invariants, identifier rules) and stores nothing: an OperationOutcome listing every issue.",
        resource=supported_types(),  # every type this server stores (R4's definition says Resource)
        type=True,
        instance=True,
        base="http://hl7.org/fhir/OperationDefinition/Resource-validate",
        parameters=(
            Param("resource", "Resource", documentation="The resource (or send it alone as the body)"),
            Param("mode", "code", documentation="create | update | delete"),
            Param("profile", "uri", documentation="Only the core profile of the type is supported"),
        ),
        outputs=(Param("return", "OperationOutcome", min=1, use="out", documentation="Every issue found"),),
    ),
    Operation(
        "subscription-status",
        "status",
        "SubscriptionStatus",
        "The status of a subscription (Subscriptions R5 Backport IG for R4): a searchset Bundle of one "
        "SubscriptionStatus Parameters (type query-status) with the events matched since it started.",
        resource=("Subscription",),
        instance=True,
        base="http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status",
        outputs=(Param("return", "Bundle", min=1, use="out", documentation="A searchset Bundle"),),
    ),
    Operation(
        "subscription-events",
        "events",
        "SubscriptionEvents",
        "Replays a range of a subscription's events from its outbox (a projection of the log): a history Bundle, "
        "SubscriptionStatus (type query-event) first, then each focus the subscriber's institution may read now.",
        resource=("Subscription",),
        instance=True,
        base="http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events",
        parameters=(
            Param("eventsSinceNumber", "string", documentation="The first event number to return (inclusive)"),
            Param("eventsUntilNumber", "string", documentation="The last event number to return (inclusive)"),
            Param("content", "code", documentation="empty, id-only or full-resource (default: the subscription's)"),
        ),
        outputs=(Param("return", "Bundle", min=1, use="out", documentation="A history Bundle"),),
    ),
    Operation(
        "ledger-key",
        "ledger-key",
        "LedgerKey",
        "The ledger's Ed25519 public key (PEM).",
        system=True,
    ),
    Operation(
        "ledger-head",
        "ledger-head",
        "LedgerHead",
        "The latest signed block head of the ledger (log=record, the clinical log, or audit).",
        system=True,
        parameters=(Param("log", "code"),),
    ),
    Operation(
        "ledger-proof",
        "ledger-proof",
        "LedgerProof",
        "An inclusion proof of one event (event=N, or resource=Type/id and version=V) against a signed head.",
        system=True,
        parameters=(
            Param("event", "integer"),
            Param("resource", "string"),
            Param("version", "string"),
            Param("log", "code"),
        ),
    ),
)

_TERMINOLOGY = "http://hl7.org/fhir/OperationDefinition/"
_SYSTEM = Param("system", "uri", documentation="The code system's canonical url")
_CODING = "A Coding (POST) instead of system and code"

#: The terminology service (R4 terminology-service.html): the spec's CodeSystems and ValueSets and those
#: users stored (projections/terminology). Each is the spec's definition narrowed to what is supported.
TERMINOLOGY_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "lookup",
        "lookup",
        "CodeSystemLookup",
        "Details of a code of a code system: name, display, designations and properties (parent and child).",
        resource=("CodeSystem",),
        type=True,
        base=_TERMINOLOGY + "CodeSystem-lookup",
        parameters=(
            Param("code", "code", documentation="The code to look up"),
            _SYSTEM,
            Param("version", "string", documentation="The code system's version"),
            Param("coding", "Coding", documentation=_CODING),
            Param("property", "code", max="*", documentation="Only these properties (parent, child, ...)"),
        ),
        outputs=(
            Param("name", "string", min=1, use="out"),
            Param("version", "string", use="out"),
            Param("display", "string", min=1, use="out"),
            Param("designation", "", max="*", use="out", documentation="language, use, value"),
            Param("property", "", max="*", use="out", documentation="code, value"),
        ),
    ),
    Operation(
        "subsumes",
        "subsumes",
        "CodeSystemSubsumes",
        "How code A relates to code B in the code system's hierarchy.",
        resource=("CodeSystem",),
        type=True,
        instance=True,
        base=_TERMINOLOGY + "CodeSystem-subsumes",
        parameters=(
            Param("codeA", "code"),
            Param("codeB", "code"),
            Param("system", "uri", documentation="The code system's canonical url (type level)"),
            Param("version", "string"),
            Param("codingA", "Coding"),
            Param("codingB", "Coding"),
        ),
        outputs=(
            Param(
                "outcome", "code", min=1, use="out", documentation="equivalent | subsumes | subsumed-by | not-subsumed"
            ),
        ),
    ),
    Operation(
        "expand",
        "expand",
        "ValueSetExpand",
        "The codes of a value set: compose include/exclude (concept lists, whole systems, filters is-a, "
        "descendent-of, is-not-a, in, =, regex, exists, nested value sets), text filter, paging.",
        resource=("ValueSet",),
        type=True,
        instance=True,
        base=_TERMINOLOGY + "ValueSet-expand",
        parameters=(
            Param("url", "uri", documentation="The value set's canonical url (type level)"),
            Param("valueSet", "ValueSet", documentation="The value set itself (POST, type level)"),
            Param("valueSetVersion", "string"),
            Param("filter", "string", documentation="Text: each word begins a word of the display"),
            Param("count", "integer", documentation="Page size"),
            Param("offset", "integer", documentation="Codes to skip"),
        ),
        outputs=(Param("return", "ValueSet", min=1, use="out", documentation="The value set with its expansion"),),
    ),
    Operation(
        "validate-code",
        "validate-code",
        "ValueSetValidateCode",
        "Whether a code is in a value set (and its display right).",
        resource=("ValueSet",),
        type=True,
        instance=True,
        base=_TERMINOLOGY + "ValueSet-validate-code",
        parameters=(
            Param("url", "uri", documentation="The value set's canonical url (type level)"),
            Param("valueSet", "ValueSet", documentation="The value set itself (POST, type level)"),
            Param("valueSetVersion", "string"),
            Param("code", "code"),
            _SYSTEM,
            Param("display", "string"),
            Param("coding", "Coding", documentation=_CODING),
        ),
        outputs=(
            Param("result", "boolean", min=1, use="out"),
            Param("message", "string", use="out"),
            Param("display", "string", use="out"),
        ),
    ),
    Operation(
        "translate",
        "translate",
        "ConceptMapTranslate",
        "The mappings of a code in the stored ConceptMaps.",
        resource=("ConceptMap",),
        type=True,
        instance=True,
        base=_TERMINOLOGY + "ConceptMap-translate",
        parameters=(
            Param("url", "uri", documentation="The ConceptMap's canonical url (type level)"),
            Param("code", "code"),
            _SYSTEM,
            Param("coding", "Coding", documentation=_CODING),
            Param("source", "uri", documentation="The source value set of the maps to use"),
            Param("target", "uri", documentation="The target value set of the maps to use"),
            Param("targetsystem", "uri", documentation="Only mappings into this code system"),
            Param("reverse", "boolean", documentation="Map from the targets to the sources"),
        ),
        outputs=(
            Param("result", "boolean", min=1, use="out"),
            Param("message", "string", use="out"),
            Param("match", "", max="*", use="out", documentation="equivalence, concept, source"),
        ),
    ),
)

OPERATIONS = OPERATIONS + TERMINOLOGY_OPERATIONS

_BY_ID = {operation.id: operation for operation in OPERATIONS}


def by_id(operation_id: str) -> Operation:
    return _BY_ID[operation_id]


def operations_for(resource_type: str | None) -> list[Operation]:
    """The operations invoked on ``resource_type`` (type or instance level), or at system level (None)."""
    if resource_type is None:
        return [op for op in OPERATIONS if op.system]
    return [op for op in OPERATIONS if resource_type in op.resource]


def _parameter(param: Param) -> dict[str, Any]:
    item: dict[str, Any] = {"name": param.name, "use": param.use, "min": param.min, "max": param.max}
    if param.documentation:
        item["documentation"] = param.documentation
    if param.parts:
        item["part"] = [_parameter(part) for part in param.parts]
        return item
    if param.type:  # a parameter with parts has no type (R4 OperationDefinition opd-1)
        item["type"] = param.type
    if param.search_type:
        item["searchType"] = param.search_type
    return item


def definition_url(base: str, operation: Operation) -> str:
    return f"{base}/OperationDefinition/{operation.id}"


def definition_resource(base: str, operation: Operation) -> dict[str, Any]:
    """The OperationDefinition resource of ``operation`` as served by this server."""
    resource: dict[str, Any] = {
        "resourceType": "OperationDefinition",
        "id": operation.id,
        "url": definition_url(base, operation),
        "name": operation.name,
        "status": "active",
        "kind": "operation",
        "description": operation.description,
        "affectsState": operation.affects_state,
        "code": operation.code,
    }
    if operation.base:
        resource["base"] = operation.base
    if operation.resource:
        resource["resource"] = list(operation.resource)
    resource.update({"system": operation.system, "type": operation.type, "instance": operation.instance})
    parameters = [_parameter(p) for p in (*operation.parameters, *operation.outputs)]
    if parameters:
        resource["parameter"] = parameters
    return resource
