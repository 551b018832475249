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

__all__ = ["OPERATIONS", "Operation", "Param", "by_id", "definition_resource", "operations_for"]


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
