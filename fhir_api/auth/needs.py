"""What a request needs: the SMART v2 permissions (App Launch 2.0 §Scopes: ``c r u d s``) on a type.

A second, small router over ``method path``: it must agree with ``fhir_api/routes.py`` on which interaction
a URL is (read, search, create, an operation...), since the scopes are checked before routing. A Bundle
entry needs what the same request sent on its own would (R4 §3.1.0.11).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Need", "entry_need", "need_of"]


@dataclass(frozen=True)
class Need:
    """What a request needs: permissions on a type, and what a patient-context scope must check."""

    resource_type: str
    permissions: str
    #: (type, id) of a single resource read; None otherwise.
    target: tuple[str, str] | None = None
    write: bool = False
    #: $everything / $summary of this Patient id.
    patient_operation: str | None = None
    #: A compartment search in this Patient's compartment (filtered like a type search, not all or nothing).
    compartment: str | None = None


def need_of(method: str, path: str, query: str = "") -> Need:
    """What ``method path`` needs. Conditional writes (a search in the URL) need ``s`` as well: SMART v2
    scopes (App Launch 2.0 §Scopes): the server searches on the caller's behalf to find the target."""
    parts = [p for p in path[len("/fhir") :].split("/") if p]
    operation = next((p for p in parts if p.startswith("$")), None)
    if not parts:
        # A Bundle: each entry is checked on its own (fhir_api.interactions.transaction), like a request.
        return Need("*", "", write=True) if method == "POST" else Need("*", "s")
    if operation is not None:
        if parts[0] == "Patient" and len(parts) == 3 and operation in ("$everything", "$summary", "$person"):
            return Need("*", "rs", patient_operation=parts[1])
        if operation == "$validate":  # as a read of the type, or of the instance named
            target = (parts[0], parts[1]) if len(parts) == 3 else None
            return Need(parts[0], "r", target=target)
        if parts[0] == "Patient" and len(parts) == 3 and operation == "$access-grants":
            # Who may read the record is told to whoever may read the Patient record (and to its patient).
            return Need("Patient", "r", target=("Patient", parts[1]))
        if operation in ("$link", "$unlink"):
            return Need(parts[0], "u", write=True)
        if operation in ("$match", "$ihe-pix", "$review"):
            return Need(parts[0], "s")
        if operation.startswith("$import"):
            # $import writes any type (each NDJSON line is an update-as-create), and its status and
            # cancellation belong to the same writer: create and update on every type.
            return Need("*", "cu", write=True)
        # $export (system, Patient, Group), $export-status/file, $ledger-*: bulk reads over every type
        if operation.startswith("$export") or parts[0].startswith("$"):
            return Need("*", "s")
        return Need(parts[0], "s")
    resource_type = parts[0]
    if resource_type in ("_history", "_search"):  # system history, system search by POST
        return Need("*", "s")
    if len(parts) >= 3 and parts[2] not in ("_history",) and parts[0] == "Patient":
        # Compartment search, GET Patient/[id]/[type] or POST .../[type]/_search (R4 §3.1.1.1).
        return Need(parts[2], "s", compartment=parts[1])
    if len(parts) == 1:
        if method == "GET":
            return Need(resource_type, "s")
        permission = {"POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method, "c")
        if method != "POST" and query:
            permission += "s"
        return Need(resource_type, permission, write=True)
    if parts[1] in ("_history", "_search"):
        return Need(resource_type, "s")
    if method == "GET":
        return Need(resource_type, "r", target=(resource_type, parts[1]))
    permission = {"PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method, "u")
    return Need(resource_type, permission, write=True)


def entry_need(method: str, url: str, if_none_exist: str | None = None) -> Need:
    """What one Bundle entry needs, as the same request sent on its own would (R4 §3.1.0.11: each entry
    is processed as if it were an individual interaction)."""
    path, _, query = url.partition("?")
    need = need_of(method, "/fhir/" + path.strip("/"), query)
    if method == "POST" and if_none_exist:
        need = Need(need.resource_type, need.permissions + "s", need.target, need.write, need.patient_operation)
    return need
