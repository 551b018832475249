"""Profiles found in the terminology store and checked (R4 profiling.html#profile-use).

A resource claims profiles in ``meta.profile``; ``$validate`` names them with ``profile``. Each is looked up
by canonical url (``url|version`` names a version) among the stored StructureDefinitions, then the shipped
ones. The core profile of a type (``http://hl7.org/fhir/StructureDefinition/{type}``) is what every write
is checked against already.

A profile this server does not know: R4 leaves it to the server ("a resource may claim conformance to a
profile ... servers may choose to reject resources that claim profiles they do not know"). This server
accepts such a write (the HL7 examples claim the spec's vitalsigns profiles; refusing would refuse the
published examples) and ``$validate`` reports the claim as a warning; ``$validate?profile=`` naming an
unknown profile is refused, 400 not-supported: the caller asked for a check that cannot be made.

A profile stored with only a ``differential`` is checked through the snapshot generated against its base
(:mod:`ehr_core.resources.snapshot`), the base being a core definition or another profile found here. A
StructureDefinition written is checked the same way: a differential that does not constrain its base (an
element the base lacks, a widened cardinality, a type the base does not allow) or names a base this server
does not know is refused when it is written, rather than when a resource first claims it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ehr_core.errors import InvalidResource, Issue, RecordError
from ehr_core.resources.profiles import Member, profile_issues
from ehr_core.resources.snapshot import Resolve, with_snapshot
from projections.db import Tx
from projections.terminology.engine import validate_code
from projections.terminology.store import TerminologyStore

#: Looks a canonical resource up: (tx, resource type, url, version) to the resource, or None.
Find = Callable[[Tx, str, str, str | None], dict[str, Any] | None]

__all__ = ["CORE_PROFILE", "claimed_profiles", "conformance_issues_in", "member_in", "structures_in"]

CORE_PROFILE = "http://hl7.org/fhir/StructureDefinition/"


def claimed_profiles(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    return [p for p in profiles if isinstance(p, str)] if isinstance(profiles, list) else []


def member_in(tx: Tx) -> Member:
    """Membership in a value set of the store. A value set including a whole code system the store does not
    hold (CIE-10 without its CodeSystem loaded) can only check the system."""
    resolve = TerminologyStore.resolver(tx)

    def member(value_set_url: str, system: str | None, code: str) -> bool | None:
        url, _, version = value_set_url.partition("|")
        value_set = resolve("ValueSet", url, version or None)
        if value_set is None:
            return None
        try:
            answer = validate_code(resolve, value_set, system, code, None)
        except RecordError:  # e.g. a whole external code system, not expanded here
            includes = (value_set.get("compose") or {}).get("include") or []
            whole = {i.get("system") for i in includes if not i.get("concept") and not i.get("filter")}
            return system in whole if whole else None
        return bool(answer["parameter"][0]["valueBoolean"])

    return member


def structures_in(tx: Tx) -> Resolve:
    """StructureDefinitions by canonical url (``url|version``) in the store: the base profiles of a snapshot."""

    def resolve(canonical: str) -> dict[str, Any] | None:
        url, _, version = canonical.partition("|")
        return TerminologyStore.find(tx, "StructureDefinition", url, version or None)

    return resolve


def _snapshot_issues(tx: Tx, structure: dict[str, Any]) -> list[Issue]:
    """A constraining StructureDefinition's differential generated into a snapshot, or why it cannot be."""
    if structure.get("derivation") != "constraint" or not structure.get("differential"):
        return []
    try:
        with_snapshot(structure, structures_in(tx))
    except RecordError as error:
        return error.issues
    return []


def conformance_issues_in(
    tx: Tx, resource: dict[str, Any], profiles: list[str], named: bool = False, find: Find | None = None
) -> list[Issue]:
    """Issues of ``resource`` against each of ``profiles`` (the core ones skipped), and, for a
    StructureDefinition, those of its differential against its base. An unknown profile: a warning, or
    (``named``: $validate asked for it) 400 not-supported. ``find`` looks a profile up (default: the
    terminology store, each time; a bulk import's chunk looks each one up once)."""
    find = find or TerminologyStore.find
    resource_type = str(resource.get("resourceType"))
    issues = _snapshot_issues(tx, resource) if resource_type == "StructureDefinition" else []
    for profile in profiles:
        url, _, version = profile.partition("|")
        if url == CORE_PROFILE + resource_type:
            continue
        structure = find(tx, "StructureDefinition", url, version or None)
        if structure is None:
            message = f"the profile {profile} is not known to this server: the resource is not checked against it"
            if named:
                raise InvalidResource([Issue("not-supported", message, "profile")])
            issues.append(Issue("not-found", message, f"{resource_type}.meta.profile", severity="warning"))
            continue
        try:
            structure = with_snapshot(structure, structures_in(tx))
        except RecordError as error:  # stored before its base, or its base changed since
            message = f"the profile {profile} cannot be applied: " + "; ".join(i.diagnostics for i in error.issues)
            issues.append(Issue("processing", message, f"{resource_type}.meta.profile"))
            continue
        issues += profile_issues(resource, structure, member_in(tx), resolve=structures_in(tx))
    return issues
