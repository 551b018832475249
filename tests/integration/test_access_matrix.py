"""The access matrix, with auth ON, on both backends.

institutions (IMSS, ISSSTE, IMSS-BIENESTAR) x consent states (none, active, revoked, expired, not yet valid,
break-the-glass) x scopes (``user/*.rs``, ``patient/*.rs``, ``user/Observation.rs``, ``system/*.rs``) x
interactions (read, search with totals, ``_include``/``_revinclude``, ``$everything``, instance, type and
system history, system/Patient/Group ``$export``).

IMSS records every patient; each patient's Consent (recorded by IMSS) names ISSSTE in the state the case is
about, so for ISSSTE the state decides, while IMSS-BIENESTAR, never named, is the third party. ISSSTE also
recorded an Observation of an IMSS patient (its own record, whatever the consent), IMSS-BIENESTAR has a
patient of its own, and an Organization (a shared directory resource) is read by everyone.

Each answer is checked against an oracle written here from the policy's statement (not from its SQL):
exactly the resources the caller may see, ``total`` counting only them, 403 where a single-resource or
whole-record decision denies, and every request audited once (institution, status, purpose ``BTG`` when
the glass was broken, and for searches the very resources disclosed). The data are built once per backend.
"""

from __future__ import annotations

import base64
import contextlib
import io
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from ehr_core.audit import AuditRecord
from ehr_core.settings import Settings
from fhir_api.auth import mint_development_token
from fhir_api.cli import main
from fhir_api.services import Services
from projections.access import SHARED_TYPES
from tests.support.access import consent, secured_server

INSTITUTIONS = ("IMSS", "ISSSTE", "IMSS-BIENESTAR")
STATES = ("none", "active", "revoked", "expired", "future", "break-the-glass")
SCOPES = ("user/*.rs", "patient/*.rs", "user/Observation.rs", "system/*.rs")
FHIR = {"Content-Type": "application/fhir+json"}
GLASS = {"X-EHR-Break-Glass": "paciente inconsciente en urgencias"}
INSTITUTION_SYSTEM = "urn:ehr-core:institution"
PERIODS: dict[str, dict[str, str]] = {
    "active": {"start": "2020-01-01T00:00:00+00:00"},
    "revoked": {"start": "2020-01-01T00:00:00+00:00"},
    "expired": {"start": "2020-01-01T00:00:00+00:00", "end": "2021-01-01T00:00:00+00:00"},
    "future": {"start": "2999-01-01T00:00:00+00:00"},
}
# Names and birth dates far apart, so the master patient index links none of these records.
PEOPLE = {
    "none": ("Zamora", "Ximena", "1931-02-03"),
    "active": ("Bautista", "Rodrigo", "1948-07-19"),
    "revoked": ("Quiroga", "Leticia", "1955-11-30"),
    "expired": ("Huerta", "Fernando", "1969-05-12"),
    "future": ("Nava", "Guadalupe", "1977-09-08"),
    "break-the-glass": ("Ortega", "Saúl", "1986-01-25"),
    "own": ("Villanueva", "Carmen", "2001-12-14"),
}


@dataclass(frozen=True)
class Record:
    type: str
    id: str
    owner: str
    #: The patient compartments holding it.
    patients: tuple[str, ...]
    versions: int = 1
    #: For Observations: the subject's Patient id.
    subject: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.id)


@dataclass
class World:
    client: TestClient
    services: Services
    settings: Settings
    patient: dict[str, str]  # consent state (and "own") -> Patient id
    observation: dict[str, str]  # consent state -> the IMSS Observation of that patient
    group: str
    records: list[Record]
    #: Every request made: (user, status, purpose expected, disclosed (Type, id) or None when not checked)
    requests: list[tuple[str, int, str, frozenset[tuple[str, str]] | None]] = field(default_factory=list)
    granted: int = 0

    def state_of(self, patient: str) -> str | None:
        return next((s for s, p in self.patient.items() if p == patient), None)


# -- the oracle: the policy as the issue states it ----------------------------------------------------------


def consented(world: World, reader: str, patient: str) -> bool:
    return reader == "ISSSTE" and world.state_of(patient) == "active"


def institution_may(world: World, reader: str, record: Record) -> bool:
    """Own records; shared directory types; otherwise an active consent of every patient concerned."""
    if record.owner == reader or record.type in SHARED_TYPES:
        return True
    return bool(record.patients) and all(consented(world, reader, p) for p in record.patients)


def scope_may(scope: str, patient: str | None, record: Record) -> bool:
    if scope in ("user/*.rs", "system/*.rs"):
        return True
    if scope == "user/Observation.rs":
        return record.type == "Observation"
    return record.type in SHARED_TYPES or patient in record.patients


def visible(world: World, reader: str, scope: str, patient: str | None, glass: bool, record: Record) -> bool:
    return scope_may(scope, patient, record) and (glass or institution_may(world, reader, record))


# -- building the world once per backend ------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp(f"matrix-{request.param}")
    with secured_server(request, request.param, data_dir) as (client, services, settings):
        yield _build(client, services, settings)


def token(settings: Settings, institution: str, user: str, scope: str, patient: str | None = None) -> dict[str, str]:
    """A bearer token from ``ehr token`` itself (the local development issuer of this data directory)."""
    args = ["token", "--data", str(settings.data_dir), "--institution", institution, "--user", user, "--scope", scope]
    if patient is not None:
        args += ["--patient", patient]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return {"Authorization": f"Bearer {out.getvalue().strip()}"}


def _create(client: TestClient, headers: dict[str, str], resource: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR | headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _consent(patient: str, state: str) -> dict[str, Any]:
    return consent(patient, "ISSSTE", PERIODS[state])


def _patient(family: str, given: str, born: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "birthDate": born}


def _observation(patient: str, text: str, organization: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if organization:
        resource["performer"] = [{"reference": f"Organization/{organization}"}]
    return resource


def _build(client: TestClient, services: Services, settings: Settings) -> World:
    writers = {i: token(settings, i, f"writer.{i}", "user/*.cruds") for i in INSTITUTIONS}
    imss = writers["IMSS"]
    records: list[Record] = []
    organization = _create(client, imss, {"resourceType": "Organization", "name": "UMF 20 IMSS"})["id"]
    records.append(Record("Organization", organization, "IMSS", ()))
    patients: dict[str, str] = {}
    observations: dict[str, str] = {}
    for state in STATES:
        pid = _create(client, imss, _patient(*PEOPLE[state]))["id"]
        patients[state] = pid
        records.append(Record("Patient", pid, "IMSS", (pid,)))
        oid = _create(client, imss, _observation(pid, f"glucosa {state}", organization))["id"]
        observations[state] = oid
        records.append(Record("Observation", oid, "IMSS", (pid,), subject=pid))
        if state in PERIODS:
            consent = _create(client, imss, _consent(pid, state))
            versions = 1
            if state == "revoked":
                consent["status"] = "inactive"
                revoked = client.put(f"/fhir/Consent/{consent['id']}", json=consent, headers=FHIR | imss)
                assert revoked.status_code == 200, revoked.text
                versions = 2
            records.append(Record("Consent", consent["id"], "IMSS", (pid,), versions))
    # ISSSTE's own note on an IMSS patient who never consented: its own record, readable by it.
    theirs = _create(client, writers["ISSSTE"], _observation(patients["none"], "nota ISSSTE"))["id"]
    records.append(Record("Observation", theirs, "ISSSTE", (patients["none"],), subject=patients["none"]))
    # IMSS-BIENESTAR's own patient and record.
    own = _create(client, writers["IMSS-BIENESTAR"], _patient(*PEOPLE["own"]))["id"]
    patients["own"] = own
    records.append(Record("Patient", own, "IMSS-BIENESTAR", (own,)))
    mine = _create(client, writers["IMSS-BIENESTAR"], _observation(own, "nota Bienestar"))["id"]
    records.append(Record("Observation", mine, "IMSS-BIENESTAR", (own,), subject=own))
    # A Group of IMSS over a patient who never consented and one who did.
    members = (patients["none"], patients["active"])
    group = {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{p}"}} for p in members],
    }
    gid = _create(client, imss, group)["id"]
    records.append(Record("Group", gid, "IMSS", members))
    services.identity_current()
    return World(client, services, settings, patients, observations, gid, records)


# -- requests ----------------------------------------------------------------------------------------------


def _get(
    world: World,
    user: str,
    path: str,
    headers: dict[str, str],
    disclosed: frozenset[tuple[str, str]] | None = None,
    **params: Any,
) -> Any:
    response = world.client.get(path, headers=headers, params=params or None)
    granted = response.headers.get("x-ehr-break-glass") == "granted"
    world.granted += granted
    purpose = "BTG" if granted else "TREAT"
    # Searches and type/system history (paths /fhir/Type, /fhir/_history...): what they listed is what
    # the audit entry must name (instance reads name their one target instead).
    if response.status_code == 200 and path.count("/") == 2 and "Bundle" in response.text[:40]:
        body = response.json()
        disclosed = frozenset(
            (e["resource"]["resourceType"], e["resource"]["id"])
            for e in body.get("entry", [])
            if e.get("resource", {}).get("resourceType") != "OperationOutcome"
        )
    world.requests.append((user, response.status_code, purpose, disclosed if response.status_code == 200 else None))
    return response


def _entries(response: Any) -> tuple[set[tuple[str, str]], set[tuple[str, str]], int | None]:
    body = response.json()
    matches, includes = set(), set()
    for entry in body.get("entry", []):
        resource = entry["resource"]
        key = (resource["resourceType"], resource["id"])
        (includes if entry.get("search", {}).get("mode") == "include" else matches).add(key)
    return matches, includes, body.get("total")


def _forbidden(response: Any, *needles: str) -> None:
    assert response.status_code == 403, response.text[:300]
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    for needle in needles:
        assert needle not in response.text


# -- the per-patient matrix: read, search with totals, _include/_revinclude, $everything, instance history ----


CASES = [(i, s, c) for i in INSTITUTIONS for s in STATES for c in SCOPES]


@pytest.mark.parametrize(("reader", "state", "scope"), CASES, ids=["|".join(case) for case in CASES])
def test_one_patients_record(world: World, reader: str, state: str, scope: str) -> None:
    pid, oid = world.patient[state], world.observation[state]
    glass = state == "break-the-glass"
    launch = pid if scope.startswith("patient/") else None
    user = f"{reader}|{state}|{scope}"
    headers = token(world.settings, reader, user, scope, launch) | (GLASS if glass else {})
    by_key = {r.key: r for r in world.records}
    observation, patient = by_key[("Observation", oid)], by_key[("Patient", pid)]
    family = PEOPLE[state][0]

    def sees(record: Record) -> bool:
        return visible(world, reader, scope, launch, glass, record)

    # read and instance history: one decision each, 200 or 403 (never a partial answer)
    for path in (f"/fhir/Observation/{oid}", f"/fhir/Observation/{oid}/_history"):
        response = _get(world, user, path, headers)
        if sees(observation):
            assert response.status_code == 200, (path, response.text[:300])
            assert oid in response.text
            flagged = response.headers.get("x-ehr-break-glass") == "granted"
            assert flagged == (glass and not institution_may(world, reader, observation))
        else:
            _forbidden(response, f"glucosa {state}")

    # search with totals and _include: only what may be seen, counted as such
    response = _get(
        world,
        user,
        "/fhir/Observation",
        headers,
        subject=f"Patient/{pid}",
        _total="accurate",
        _include=["Observation:subject", "Observation:performer"],
    )
    assert response.status_code == 200, response.text[:300]
    matches, includes, total = _entries(response)
    expected = {r.key for r in world.records if r.type == "Observation" and r.subject == pid and sees(r)}
    assert matches == expected
    assert total == len(expected)
    # IMSS's Observations name the shared Organization as performer; included only from a visible match.
    referenced = {("Patient", pid)} if expected else set()
    if any(key[1] in world.observation.values() for key in expected):
        referenced.add(("Organization", world.records[0].id))
    assert includes == {k for k in referenced if sees(by_key[k])}
    if not sees(patient):
        assert family not in response.text

    # _revinclude from the Patient
    response = _get(
        world, user, "/fhir/Patient", headers, _id=pid, _total="accurate", _revinclude="Observation:subject"
    )
    if scope == "user/Observation.rs":
        _forbidden(response, family)
    else:
        assert response.status_code == 200, response.text[:300]
        matches, includes, total = _entries(response)
        assert matches == ({("Patient", pid)} if sees(patient) else set()) and total == len(matches)
        assert includes == (expected if matches else set())

    # $everything: the unified record is permitted when the patient's record is (each linked Patient record;
    # none is linked here), and then holds exactly the entries of its compartment that the caller may see:
    # another institution's note in the compartment neither locks the record holder out nor is shown to it.
    response = _get(world, user, f"/fhir/Patient/{pid}/$everything", headers)
    compartment = [r for r in world.records if pid in r.patients]
    if scope == "user/Observation.rs":
        _forbidden(response, family)
    elif glass or institution_may(world, reader, patient):
        assert response.status_code == 200, response.text[:300]
        assert _entries(response)[0] == {r.key for r in compartment if sees(r)}
    else:
        _forbidden(response, family, f"glucosa {state}")


# -- the broad reads: search of a type, type and system history, bulk export ---------------------------------


BROAD = [(i, c, g) for i in INSTITUTIONS for c in SCOPES for g in (False, True)]


def _export(world: World, user: str, path: str, headers: dict[str, str]) -> tuple[int, set[tuple[str, str]]]:
    kick = _get(world, user, path, headers | {"Prefer": "respond-async"})
    if kick.status_code != 202:
        return kick.status_code, set()
    status_url = kick.headers["content-location"].split("/fhir", 1)[1]
    deadline = time.monotonic() + 30
    while True:
        status = _get(world, user, f"/fhir{status_url}", headers)
        if status.status_code != 202:
            break
        assert time.monotonic() < deadline, "export did not finish"
        time.sleep(0.05)
    assert status.status_code == 200, status.text
    manifest = status.json()
    assert manifest["requiresAccessToken"] is True
    found: set[tuple[str, str]] = set()
    for output in manifest["output"]:
        file = _get(world, user, "/fhir" + output["url"].split("/fhir", 1)[1], headers)
        assert file.status_code == 200
        for line in file.content.splitlines():
            resource = orjson.loads(line)
            found.add((resource["resourceType"], resource["id"]))
    # Another institution cannot see the job: 404, as for a job that does not exist.
    stranger = next(i for i in INSTITUTIONS if i != user.split("|")[0])
    label = f"{stranger}|stranger|{user}"
    other = token(world.settings, stranger, label, "system/*.rs")
    assert _get(world, label, f"/fhir{status_url}", other).status_code == 404
    return 202, found


@pytest.mark.parametrize(("reader", "scope", "glass"), BROAD, ids=[f"{i}|{c}|{g}" for i, c, g in BROAD])
def test_broad_reads(world: World, reader: str, scope: str, glass: bool) -> None:
    launch = world.patient["none"] if scope.startswith("patient/") else None
    user = f"{reader}|broad|{scope}|{glass}"
    headers = token(world.settings, reader, user, scope, launch) | (GLASS if glass else {})

    def sees(record: Record, honour_glass: bool = True) -> bool:
        return visible(world, reader, scope, launch, glass and honour_glass, record)

    # a type-wide search: every visible Observation, and a total that counts nothing else
    response = _get(world, user, "/fhir/Observation", headers, _total="accurate", _count="500")
    if launch is not None:
        _forbidden(response, "glucosa")  # patient scopes: only searches naming the launch patient
    else:
        matches, _, total = _entries(response)
        expected = {r.key for r in world.records if r.type == "Observation" and sees(r)}
        assert matches == expected and total == len(expected)
        # _summary=count discloses nothing more than the total of what may be seen
        counted = _get(world, user, "/fhir/Observation", headers, _summary="count")
        assert counted.json()["total"] == len(expected)

    # type and system history: the versions of visible resources (break-the-glass is not for browsing logs)
    for path, types in (("/fhir/Observation/_history", {"Observation"}), ("/fhir/_history", None)):
        response = _get(world, user, path, headers, _count="500")
        if launch is not None or (types is None and scope == "user/Observation.rs"):
            _forbidden(response, "glucosa")
            continue
        assert response.status_code == 200, response.text[:300]
        body = response.json()
        shown = Counter((e["resource"]["resourceType"], e["resource"]["id"]) for e in body.get("entry", []))
        wanted = {r.key: r.versions for r in world.records if (types is None or r.type in types) and sees(r, False)}
        assert dict(shown) == wanted
        assert body["total"] == sum(wanted.values())

    # bulk export: system, Patient and Group level
    for level, path in (
        ("system", "/fhir/$export"),
        ("patient", "/fhir/Patient/$export"),
        ("group", f"/fhir/Group/{world.group}/$export"),
    ):
        status, found = _export(world, user, path, headers)
        if launch is not None or scope == "user/Observation.rs":
            assert status == 403, (level, status)
            continue
        group = next(r for r in world.records if r.type == "Group")
        if level == "group" and not (glass or institution_may(world, reader, group)):
            assert status == 403, (level, status)
            continue
        assert status == 202
        wanted = {r for r in world.records if sees(r)}
        if level == "patient":
            wanted = {r for r in wanted if r.patients}
        elif level == "group":
            wanted = {r for r in wanted if set(r.patients) & set(group.patients)}
        assert found == {r.key for r in wanted}, level


# -- every decision audited ---------------------------------------------------------------------------------


def test_every_decision_is_audited(world: World) -> None:
    if not world.requests:  # run alone: make a few decisions to audit
        test_one_patients_record(world, "ISSSTE", "none", "user/*.rs")
        test_one_patients_record(world, "ISSSTE", "break-the-glass", "user/*.rs")
    compliance = world.services.compliance
    assert compliance is not None
    compliance.audit_views_current()
    notifications = compliance.audit_log.recorder.select_notifications(start=1, limit=1_000_000)
    audited: dict[str, list[dict[str, Any]]] = {}
    for event in map(compliance.audit_log.mapper.to_domain_event, notifications):
        if isinstance(event, AuditRecord.Recorded) and event.entry.get("method") == "GET":
            audited.setdefault(str(event.entry["user"]), []).append(event.entry)
    made: dict[str, list[tuple[int, str, frozenset[tuple[str, str]] | None]]] = {}
    for user, status, purpose, disclosed in world.requests:
        made.setdefault(user, []).append((status, purpose, disclosed))
    assert set(made) <= set(audited)
    for user, requests in made.items():
        entries = audited[user]
        # One entry per request, with its status and, where the glass was broken, purpose BTG.
        assert sorted((s, p) for s, p, _ in requests) == sorted((e["status"], e["purpose"]) for e in entries), user
        assert {e["institution"] for e in entries} == {user.split("|")[0]}
        # What a search or a history page disclosed is what its audit entry names, resource by resource.
        named = Counter(
            frozenset(tuple(ref.split("/")[:2]) for ref in e.get("entities", []))
            for e in entries
            if e["status"] == 200 and e["path"].count("/") == 2
        )
        for status, _, disclosed in requests:
            if status == 200 and disclosed is not None and disclosed:
                assert named[disclosed] > 0, (user, sorted(disclosed))
                named[disclosed] -= 1
    # Every granted break-the-glass is listed for review.
    with world.services.views.read() as tx:
        row = tx.execute("SELECT COUNT(*) FROM break_glass_log").fetchone()
    assert row is not None and row[0] == world.granted


# -- writes: every write interaction, its conditional form, in REST, batch and transaction -------------------
#
# A write to a resource another institution recorded needs a write grant, and none exists: whatever the
# consent (which grants reading), only the recorder changes its resource. Conditional matches consider only
# what the caller may read, so a hidden record is neither found nor changed: a conditional update or create
# then records the caller's own resource, a conditional delete deletes nothing. Patient scopes never write,
# read-only scopes never write. A Consent written by anyone but the patient record's custodian grants nothing.

WRITERS = ("IMSS", "ISSSTE", "IMSS-BIENESTAR")
WRITE_STATES = ("none", "active", "self-granted")
WRITE_SCOPES = ("user/*.cruds", "user/*.rs", "patient/*.cruds")
WRITES = (
    "update",
    "patch",
    "delete",
    "conditional-update",
    "conditional-patch",
    "conditional-delete",
    "conditional-create",
)
CHANNELS = ("rest", "batch", "transaction")
IDENTIFIER = "urn:ehr-core:test:lab"


@dataclass
class WriteWorld:
    client: TestClient
    settings: Settings
    imss: dict[str, str]
    count: int = 0


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def write_world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WriteWorld]:
    data_dir = tmp_path_factory.mktemp(f"writes-{request.param}")
    with secured_server(request, request.param, data_dir) as (client, _, settings):
        yield WriteWorld(client, settings, token(settings, "IMSS", "writer.IMSS", "user/*.cruds"))


def _minted(settings: Settings, institution: str, user: str, scope: str, patient: str | None = None) -> dict[str, str]:
    """A development token minted in-process (the write matrix makes hundreds; ``ehr token`` is tested above)."""
    claims: dict[str, Any] = {"institution": institution, "user": user, "scope": scope}
    if patient is not None:
        claims["patient"] = patient
    return {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


def _consent_by(client: TestClient, headers: dict[str, str], patient: str, reader: str) -> None:
    _create(client, headers, consent(patient, reader, PERIODS["active"]))


def _write_request(write: str, oid: str, lab: str) -> tuple[str, str, Any, dict[str, str]]:
    """(method, url relative to the base, body, headers) of ``write`` on the IMSS Observation ``oid``."""
    replaced = _observation("x", "glucosa FORJADA") | {"id": oid}
    by_lab = f"Observation?identifier={IDENTIFIER}|{lab}"
    patch = [{"op": "replace", "path": "/status", "value": "entered-in-error"}]
    fhirpath = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Observation.status"},
                    {"name": "value", "valueCode": "entered-in-error"},
                ],
            }
        ],
    }
    json_patch = {"Content-Type": "application/json-patch+json"}
    if write == "update":
        return "PUT", f"Observation/{oid}", replaced, FHIR
    if write == "patch":
        return "PATCH", f"Observation/{oid}", patch, json_patch
    if write == "delete":
        return "DELETE", f"Observation/{oid}", None, {}
    if write == "conditional-update":
        return "PUT", by_lab, {k: v for k, v in replaced.items() if k != "id"}, FHIR
    if write == "conditional-patch":
        return "PATCH", by_lab, fhirpath, FHIR
    if write == "conditional-delete":
        return "DELETE", by_lab, None, {}
    assert write == "conditional-create"
    created = _observation("x", "glucosa duplicada") | {"identifier": [{"system": IDENTIFIER, "value": lab}]}
    return "POST", "Observation", created, FHIR | {"If-None-Exist": f"identifier={IDENTIFIER}|{lab}"}


def _bundle_of(kind: str, method: str, url: str, body: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url}}
    if method == "POST" and url == "Observation":
        lab = body["identifier"][0]["value"]
        entry["request"]["ifNoneExist"] = f"identifier={IDENTIFIER}|{lab}"
    if body is not None and method == "PATCH" and isinstance(body, list):
        entry["resource"] = {
            "resourceType": "Binary",
            "contentType": "application/json-patch+json",
            "data": base64.b64encode(orjson.dumps(body)).decode(),
        }
    elif body is not None:
        entry["resource"] = body
    return {"resourceType": "Bundle", "type": kind, "entry": [entry]}


def _expected(writer: str, state: str, scope: str, write: str) -> set[int]:
    """The statuses the policy allows for the interaction (the oracle, from the policy's statement)."""
    if scope != "user/*.cruds":
        return {403}
    if writer == "IMSS":
        return {200, 201, 204} if write != "conditional-create" else {200}
    readable = writer == "ISSSTE" and state == "active"
    if write in ("update", "patch", "delete"):
        return {403}
    if write == "conditional-create":
        # A visible match answers with it (the caller may read it); a hidden one is not a match.
        return {200} if readable else {201}
    if readable:
        return {403}  # found, and another institution's: no write grant
    # Nothing the caller may read matches: an update records its own, a delete deletes nothing, and a patch
    # has nothing to patch.
    return {"conditional-update": {201}, "conditional-delete": {204, 200}, "conditional-patch": {404, 412}}[write]


# Every consent state with the write scope; without it (read-only or patient scopes) the state cannot matter,
# so those run once per writer, but for the read-only scope's check that a self-granted Consent opens nothing.
WRITE_CASES = [
    (w, s, c, i, ch)
    for w in WRITERS
    for c in WRITE_SCOPES
    for s in (WRITE_STATES if c == "user/*.cruds" else ("none", "self-granted") if c == "user/*.rs" else ("none",))
    for i in WRITES
    for ch in CHANNELS
]


@pytest.mark.parametrize(
    ("writer", "state", "scope", "write", "channel"), WRITE_CASES, ids=["|".join(case) for case in WRITE_CASES]
)
def test_writes(write_world: WriteWorld, writer: str, state: str, scope: str, write: str, channel: str) -> None:
    world = write_world
    client, imss = world.client, world.imss
    world.count += 1
    lab = f"L{world.count:05d}"
    pid = _create(client, imss, _patient("Salinas", "Irene", "1960-03-04"))["id"]
    observation = _observation(pid, "glucosa 96") | {"identifier": [{"system": IDENTIFIER, "value": lab}]}
    original = _create(client, imss, observation)
    oid = original["id"]
    writer_token = _minted(world.settings, writer, f"{writer}|{state}|{scope}", "user/*.cruds")
    if state == "active":
        _consent_by(client, imss, pid, "ISSSTE")  # by the custodian: grants ISSSTE reading
    elif state == "self-granted":
        _consent_by(client, writer_token if writer != "IMSS" else imss, pid, writer)  # grants nothing to others
    headers = token(
        world.settings, writer, f"{writer}|{state}|{scope}|w", scope, pid if scope.startswith("patient/") else None
    )

    method, url, body, extra = _write_request(write, oid, lab)
    if channel == "rest":
        content = None if body is None else orjson.dumps(body)
        response = client.request(method, f"/fhir/{url}", content=content, headers=extra | headers)
        status = response.status_code
        text = response.text
    else:
        bundle = _bundle_of(channel, method, url, body)
        response = client.post("/fhir", json=bundle, headers=FHIR | headers)
        text = response.text
        if channel == "transaction" or response.status_code != 200:
            status = (
                response.status_code
                if response.status_code != 200
                else int(response.json()["entry"][0]["response"]["status"].split()[0])
            )
        else:
            status = int(response.json()["entry"][0]["response"]["status"].split()[0])
    expected = _expected(writer, state, scope, write)
    assert status in expected, (status, text[:400])
    if status >= 400:
        assert "glucosa 96" not in text  # a refusal discloses nothing of the resource

    # The IMSS Observation changed only if IMSS wrote it.
    current = client.get(f"/fhir/Observation/{oid}", headers=imss)
    if writer == "IMSS" and scope == "user/*.cruds" and write != "conditional-create":
        assert current.status_code == 410 if "delete" in write else current.json() != original
    else:
        assert current.status_code == 200, current.text
        assert current.json() == original
    # Reading follows the same rule: a self-granted Consent did not open the record to its writer.
    if writer != "IMSS" and scope == "user/*.rs":
        read = client.get(f"/fhir/Observation/{oid}", headers=headers)
        assert read.status_code == (200 if writer == "ISSSTE" and state == "active" else 403), read.text[:300]
