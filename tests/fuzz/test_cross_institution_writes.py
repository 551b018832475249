"""Hypothesis as another institution: ISSSTE, holding a ``user/*.cruds`` token, throws every write form it can
build at IMSS's records, and none of them changes anything IMSS recorded (the write policy, DESIGN.md
"Access"; ``RecordApplication.authorize``).

IMSS seeds two patients with an Observation, a Condition and an Encounter each, and a Consent naming ISSSTE
for the first one only: the first patient's record is readable by ISSSTE (so the fuzzer may use what it
reads there, as a real client would), the second is hidden and carries a marker in every resource. ISSSTE
then sends PUT, PATCH, DELETE and POST on the seeded ``Type/id``, conditional URLs built from the seeded
values (CURP, institution record number, ``_id``, ``subject``, ``name``), JSON Patch, FHIRPath Patch and merge
patch bodies, ``If-Match``, ``If-None-Exist``, ``Prefer``, and batch and transaction Bundles mixing such
entries with conditional references and ``urn:uuid`` references between entries.

After every request: no 5xx, every 4xx an OperationOutcome, each IMSS stream at its seeded version, content
hash and not deleted; no answer to ISSSTE names a hidden resource's id, CURP or record number unless the
request itself did, nor carries the hidden marker. After every example: each IMSS resource, read by IMSS,
is byte for byte as seeded, with as many versions in its ``_history``.

The store is shared by all examples (a fresh one per example would cost more than the fuzzing), so a
violation is recorded with the request that caused it, the snapshot taken afresh, and the test fails at
the end listing every violation: shrinking would replay examples against a store an earlier one changed.
Generation is deterministic (``derandomize``, no example database).
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ehr_core.demo.people import make_curp
from ehr_core.identity.identifiers import CURP_SYSTEM, NSS_SYSTEM
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.auth import mint_development_token
from fhir_api.services import Services
from tests.fuzz.target import check_answer
from tests.support.access import consent

# Minutes, not seconds, per backend: kept out of ``make test-fast`` like the corpus loads.
pytestmark = [pytest.mark.slow]

EXAMPLES = 300
FUZZ = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
FHIR = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
INSTITUTION = "urn:ehr-core:institution"
#: In every resource of the hidden patient's record and nowhere else: ISSSTE never sends it, so an answer
#: carrying it disclosed a resource ISSSTE may not read.
HIDDEN = "OCULTO-IMSS-7Q"
KINDS = ("Patient", "Observation", "Condition", "Encounter", "Consent")


@dataclass(frozen=True)
class Person:
    pid: str
    curp: str
    nss: str
    family: str
    born: str
    hidden: bool


@dataclass(frozen=True)
class Seeded:
    kind: str
    rid: str
    hidden: bool
    version: int
    content_hash: str
    deleted: bool
    body: bytes
    history: int


@dataclass
class Sent:
    method: str
    url: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        body = self.body.decode(errors="replace")[:600] if self.body is not None else ""
        return f"{self.method} /fhir/{self.url} headers={self.headers} body={body}"


@dataclass(repr=False)
class World:
    client: TestClient
    services: Services
    imss: dict[str, str]
    issste: dict[str, str]
    people: list[Person]
    #: As seeded, never changed: the strategies draw from it, and data generation must not depend on what
    #: earlier examples did (Hypothesis replays a choice sequence and expects the same draws).
    seeded: tuple[Seeded, ...] = ()
    #: What each seeded resource must still be: the seeded state, or the state after a recorded violation.
    expected: dict[str, Seeded] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"World({len(self.seeded)} seeded, {self.requests} requests, {len(self.violations)} violations)"

    @property
    def readable(self) -> list[Seeded]:
        return [s for s in self.seeded if not s.hidden]


# -- the seeded record -------------------------------------------------------------------------------------


def _token(settings: Settings, institution: str, user: str) -> dict[str, str]:
    claims = {"institution": institution, "user": user, "role": "physician", "scope": "user/*.cruds"}
    return {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


def _post(client: TestClient, headers: dict[str, str], resource: dict[str, Any]) -> str:
    answer = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers={"Content-Type": FHIR} | headers)
    assert answer.status_code == 201, answer.text
    rid: str = answer.json()["id"]
    return rid


def _consent(pid: str, reader: str) -> dict[str, Any]:
    return consent(pid, reader)


def _seed(client: TestClient, imss: dict[str, str]) -> tuple[list[Person], list[tuple[str, str, bool]]]:
    people, created = [], []
    for seed, (family, second, given_name, born, nss, hidden) in enumerate(
        [
            ("Mendoza", "Ríos", "Lucía", date(1970, 3, 21), "12345678903", False),
            ("Zárate", "Secreto", "Ramona", date(1984, 11, 2), "98765432103", True),
        ]
    ):
        curp = make_curp([given_name], family, second, "M", born, "JC", random.Random(seed))
        # The marker goes only where ISSSTE has no reason to write it: address, clinical texts.
        mark = f"{HIDDEN} " if hidden else ""
        patient = {
            "resourceType": "Patient",
            "identifier": [{"system": CURP_SYSTEM, "value": curp}, {"system": NSS_SYSTEM, "value": nss}],
            "name": [{"family": f"{family} {second}", "given": [given_name]}],
            "gender": "female",
            "birthDate": born.isoformat(),
            "address": [{"line": [f"{mark}Calle Hidalgo 12"], "city": "Guadalajara"}],
        }
        pid = _post(client, imss, patient)
        people.append(Person(pid, curp, nss, family, born.isoformat(), hidden))
        subject = {"reference": f"Patient/{pid}"}
        clinical = [
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": f"{mark}carga viral VIH"},
                "subject": subject,
                "valueQuantity": {"value": 40, "unit": "copies/mL"},
            },
            {
                "resourceType": "Condition",
                "code": {"text": f"{mark}diabetes tipo 2"},
                "subject": subject,
                "clinicalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
                },
            },
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": subject,
                "reasonCode": [{"text": f"{mark}control"}],
            },
        ]
        created.append(("Patient", pid, hidden))
        created += [(r["resourceType"], _post(client, imss, r), hidden) for r in clinical]
    readable = people[0]
    created.append(("Consent", _post(client, imss, _consent(readable.pid, "ISSSTE")), False))
    return people, created


def _snapshot(world: World, kind: str, rid: str, hidden: bool) -> Seeded:
    stream = world.services.application.stream(kind, rid)
    assert stream is not None
    read = world.client.get(f"/fhir/{kind}/{rid}", headers=world.imss)
    history = world.client.get(f"/fhir/{kind}/{rid}/_history", headers=world.imss)
    assert read.status_code == (410 if stream.deleted else 200) and history.status_code == 200, read.text
    entries = len(history.json()["entry"])
    return Seeded(kind, rid, hidden, stream.version, stream.content_hash, stream.deleted, read.content, entries)


# -- what ISSSTE sends ---------------------------------------------------------------------------------------


def _conditions(world: World) -> list[str]:
    """Search URLs (without the base) that would match the seeded resources if ISSSTE could see them all."""
    urls = []
    for p in world.people:
        urls += [
            f"Patient?identifier={CURP_SYSTEM}|{p.curp}",
            f"Patient?identifier={p.curp}",
            f"Patient?identifier={NSS_SYSTEM}|{p.nss}",
            f"Patient?name={p.family}",
            f"Patient?family={p.family}&birthdate={p.born}",
            f"Patient?_id={p.pid}",
        ]
        for kind in ("Observation", "Condition", "Encounter"):
            urls += [f"{kind}?subject=Patient/{p.pid}", f"{kind}?patient={p.pid}"]
        urls.append(f"Consent?patient={p.pid}")
    for s in world.seeded:
        urls.append(f"{s.kind}?_id={s.rid}")
    urls.append(f"Patient?_id={world.people[0].pid},{world.people[1].pid}")
    return urls


def _references(world: World) -> list[str]:
    refs = [f"Patient/{p.pid}" for p in world.people]
    refs += [f"Patient?identifier={CURP_SYSTEM}|{p.curp}" for p in world.people]
    refs += [f"Patient?identifier={NSS_SYSTEM}|{p.nss}" for p in world.people]
    return refs


def _template(kind: str, subject: str) -> dict[str, Any]:
    """A valid resource of ``kind`` as ISSSTE would write it; ``subject`` may be a conditional reference."""
    if kind == "Patient":
        return {"resourceType": kind, "name": [{"family": "Suplantada", "given": ["Eva"]}], "gender": "female"}
    if kind == "Observation":
        return {"resourceType": kind, "status": "amended", "code": {"text": "alterada por ISSSTE"},
                "subject": {"reference": subject}}  # fmt: skip
    if kind == "Condition":
        return {"resourceType": kind, "code": {"text": "alterada por ISSSTE"}, "subject": {"reference": subject}}
    if kind == "Encounter":
        return {"resourceType": kind, "status": "cancelled", "subject": {"reference": subject},
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"}}  # fmt: skip
    consent = _consent(subject.removeprefix("Patient/"), "ISSSTE")
    consent["patient"] = {"reference": subject}
    return consent


@st.composite
def _resource(draw: st.DrawFn, world: World, kind: str, rid: str | None) -> dict[str, Any]:
    """A body for ``kind``: ISSSTE's own template, or (for what ISSSTE may read) IMSS's version, edited."""
    readable = [s for s in world.readable if s.kind == kind]
    if readable and draw(st.booleans()):
        resource: dict[str, Any] = json.loads(draw(st.sampled_from(readable)).body)
        if draw(st.booleans()):  # as read, or stripped of the version it was read at
            resource.pop("meta", None)
        resource["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">ISSSTE</div>'}
    else:
        resource = _template(kind, draw(st.sampled_from(_references(world))))
    if kind == "Patient" and draw(st.booleans()):  # claim a seeded person's identifiers
        person = draw(st.sampled_from(world.people))
        resource["identifier"] = [{"system": CURP_SYSTEM, "value": person.curp}]
        if draw(st.booleans()):
            resource["identifier"].append({"system": NSS_SYSTEM, "value": person.nss})
    if rid is not None and draw(st.integers(0, 4)):
        resource["id"] = rid
    elif "id" in resource and draw(st.booleans()):
        del resource["id"]
    if draw(st.integers(0, 3)) == 0:
        resource["meta"] = {"versionId": draw(st.sampled_from(["1", "2", "99"]))}
    return resource


def _fhirpath_patch(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(["replace", "delete", "add"]))
    parts: list[dict[str, Any]] = [{"name": "type", "valueCode": op}]
    if op == "add":
        parts += [{"name": "path", "valueString": "Resource"}, {"name": "name", "valueString": "language"},
                  {"name": "value", "valueCode": "es"}]  # fmt: skip
    else:
        path = draw(st.sampled_from(["Observation.status", "Patient.gender", "Resource.text", "Condition.code"]))
        parts.append({"name": "path", "valueString": path})
        if op == "replace":
            parts.append({"name": "value", "valueString": "amended"})
    return {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]}


def _json_patch(draw: st.DrawFn) -> list[dict[str, Any]]:
    ops = [
        {"op": "replace", "path": "/status", "value": "amended"},
        {"op": "add", "path": "/language", "value": "es"},
        {"op": "remove", "path": "/subject"},
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "test", "path": "/code/text", "value": "carga viral VIH"},
        {"op": "test", "path": "/id", "value": "x"},
        {"op": "replace", "path": "/meta/versionId", "value": "1"},
        {"op": "add", "path": "/identifier/-", "value": {"system": "urn:x", "value": "ISSSTE"}},
    ]
    return draw(st.lists(st.sampled_from(ops), max_size=3))


@st.composite
def _patch(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["json-patch", "fhirpath", "merge"]))
    if kind == "json-patch":
        return JSON_PATCH, _json_patch(draw)
    if kind == "fhirpath":
        return FHIR, _fhirpath_patch(draw)
    merge = draw(st.sampled_from([{"status": "amended"}, {"gender": None}, {"subject": None}, {"active": False}, {}]))
    return MERGE_PATCH, merge


@dataclass
class Entry:
    """One write, sendable on its own or as a Bundle entry."""

    method: str
    url: str
    resource: Any = None
    media: str = FHIR
    if_match: str | None = None
    if_none_exist: str | None = None


@st.composite
def _entry(draw: st.DrawFn, world: World) -> Entry:
    target = draw(st.sampled_from(world.seeded))
    kind = draw(st.sampled_from([target.kind, target.kind, *KINDS]))  # now and then the id under another type
    conditional = draw(st.sampled_from(_conditions(world)))
    method = draw(st.sampled_from(["PUT", "PATCH", "DELETE", "POST"]))
    if_match = draw(st.none() | st.sampled_from(['W/"1"', 'W/"2"', "*"]))
    if method == "POST":
        kind = draw(st.sampled_from(KINDS))
        if_none_exist = draw(st.none() | st.just(conditional.partition("?")[2]))
        return Entry("POST", kind, draw(_resource(world, kind, None)), if_none_exist=if_none_exist)
    url = f"{kind}/{target.rid}" if draw(st.integers(0, 2)) else conditional
    kind = url.partition("?")[0].partition("/")[0]
    rid = None if "?" in url else url.partition("/")[2]
    if method == "DELETE":
        return Entry("DELETE", url, if_match=if_match)
    if method == "PUT":
        return Entry("PUT", url, draw(_resource(world, kind, rid)), if_match=if_match)
    media, body = draw(_patch())
    return Entry("PATCH", url, body, media, if_match)


def _prefer(draw: st.DrawFn) -> dict[str, str]:
    prefer = draw(st.sampled_from([None, "return=representation", "return=OperationOutcome", "return=minimal"]))
    return {"Prefer": prefer} if prefer else {}


@st.composite
def _single(draw: st.DrawFn, world: World) -> Sent:
    entry = draw(_entry(world))
    headers = {"Content-Type": entry.media} | _prefer(draw)
    if entry.if_match:
        headers["If-Match"] = entry.if_match
    if entry.if_none_exist:
        # A header carries ASCII only; the query string it holds is percent-encoded, as in a URL.
        headers["If-None-Exist"] = quote(entry.if_none_exist, safe="=&|:/,")
    body = None if entry.resource is None else json.dumps(entry.resource).encode()
    return Sent(entry.method, entry.url, body, headers)


@st.composite
def _identity(draw: st.DrawFn, world: World) -> Sent:
    """$link / $unlink of a seeded record: an identity change is a write too."""
    person, other = draw(st.permutations(world.people))
    operation = draw(st.sampled_from(["$link", "$unlink"]))
    body = {"resourceType": "Parameters",
            "parameter": [{"name": "other", "valueReference": {"reference": f"Patient/{other.pid}"}}]}  # fmt: skip
    return Sent("POST", f"Patient/{person.pid}/{operation}", json.dumps(body).encode(), {"Content-Type": FHIR})


@st.composite
def _bundle(draw: st.DrawFn, world: World) -> Sent:
    entries = []
    for entry in draw(st.lists(_entry(world), min_size=1, max_size=4)):
        request: dict[str, Any] = {"method": entry.method, "url": entry.url}
        if entry.if_match:
            request["ifMatch"] = entry.if_match
        if entry.if_none_exist:
            request["ifNoneExist"] = entry.if_none_exist
        item: dict[str, Any] = {"request": request}
        resource = entry.resource
        if entry.method == "PATCH" and entry.media != FHIR:
            # In a Bundle a JSON Patch or merge patch travels as a Binary (R4 §3.1.0.5).
            data = base64.b64encode(json.dumps(resource).encode()).decode()
            resource = {"resourceType": "Binary", "contentType": entry.media, "data": data}
        if resource is not None:
            item["resource"] = resource
        if draw(st.booleans()):
            item["fullUrl"] = f"urn:uuid:00000000-0000-4000-8000-{len(entries):012d}"
        entries.append(item)
    # A later entry may refer to an earlier one by its fullUrl, which must resolve to what that entry wrote.
    for later, item in enumerate(entries):
        earlier = [e["fullUrl"] for e in entries[:later] if "fullUrl" in e]
        if earlier and isinstance(item.get("resource"), dict) and "subject" in item["resource"] and draw(st.booleans()):
            item["resource"]["subject"] = {"reference": draw(st.sampled_from(earlier))}
    bundle = {"resourceType": "Bundle", "type": draw(st.sampled_from(["transaction", "batch"])), "entry": entries}
    return Sent("POST", "", json.dumps(bundle).encode(), {"Content-Type": FHIR} | _prefer(draw))


def _requests(world: World) -> st.SearchStrategy[list[Sent]]:
    one = st.one_of(_single(world), _single(world), _bundle(world), _identity(world))
    return st.lists(one, min_size=1, max_size=3)


# -- the checks ----------------------------------------------------------------------------------------------


def _disclosures(world: World, sent: Sent, text: str) -> list[str]:
    """Values of hidden IMSS resources in an answer to ISSSTE that the request did not itself name."""
    asked = sent.url + (sent.body or b"").decode(errors="replace") + json.dumps(sent.headers)
    found = [HIDDEN] if HIDDEN in text else []
    secrets = [s.rid for s in world.seeded if s.hidden]
    secrets += [value for p in world.people if p.hidden for value in (p.curp, p.nss)]
    return found + [value for value in secrets if value in text and value not in asked]


def _stream_changes(world: World) -> list[str]:
    changes = []
    for s in world.expected.values():
        stream = world.services.application.stream(s.kind, s.rid)
        now = None if stream is None else (stream.version, stream.content_hash, stream.deleted)
        if now != (s.version, s.content_hash, s.deleted):
            state = "gone" if stream is None else f"v{stream.version} deleted={stream.deleted}"
            changes.append(f"{s.kind}/{s.rid}: was v{s.version} deleted={s.deleted}, now {state}")
    return changes


def _send(world: World, sent: Sent) -> None:
    headers = world.issste | sent.headers
    answer = world.client.request(sent.method, f"/fhir/{sent.url}", content=sent.body, headers=headers)
    world.requests += 1
    world.statuses[answer.status_code] = world.statuses.get(answer.status_code, 0) + 1
    what = sent.describe()
    problems = []
    try:
        check_answer(answer.status_code, sent.method, answer.headers.get("content-type", ""), answer.content, what)
    except AssertionError as error:
        problems.append(str(error)[:1500])
    if leaked := _disclosures(world, sent, answer.text):
        problems.append(f"the answer discloses {leaked}")
    if changed := _stream_changes(world):
        problems.append(f"IMSS's resources changed: {changed}")
    if problems:
        world.violations.append(f"{what}\n -> {answer.status_code} {answer.text[:1500]}\n   " + "\n   ".join(problems))
        _rebaseline(world)


def _rebaseline(world: World) -> None:
    """After a violation, judge what follows against the store as it now is (the violation is on record)."""
    world.expected = {key: _snapshot(world, s.kind, s.rid, s.hidden) for key, s in world.expected.items()}


def _reads_as_seeded(world: World, sents: list[Sent]) -> None:
    changed = []
    for s in world.expected.values():
        now = _snapshot(world, s.kind, s.rid, s.hidden)
        if (now.body, now.history) != (s.body, s.history):
            changed.append(f"{s.kind}/{s.rid}: history {s.history} -> {now.history}, body {s.body!r} -> {now.body!r}")
    if changed:
        asked = "\n".join(sent.describe() for sent in sents)
        world.violations.append(f"after the example\n{asked}\nIMSS reads changed: {changed}")
        _rebaseline(world)


# -- the test ----------------------------------------------------------------------------------------------


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Iterator[World]:
    configured = settings.model_copy(update={"auth": "required", "data_dir": tmp_path / "ehr-data"})
    services = Services.open(configured)
    try:
        with TestClient(create_app(services=services)) as client:
            imss, issste = _token(configured, "IMSS", "dr.imss"), _token(configured, "ISSSTE", "dr.issste")
            people, created = _seed(client, imss)
            services.identity_current()
            built = World(client, services, imss, issste, people)
            built.seeded = tuple(_snapshot(built, kind, rid, hidden) for kind, rid, hidden in created)
            built.expected = {f"{s.kind}/{s.rid}": s for s in built.seeded}
            yield built
    finally:
        services.close()


def test_no_write_by_issste_changes_a_resource_of_imss(world: World, settings: Settings) -> None:
    started = time.monotonic()
    # Sanity of the premise: ISSSTE reads the consented patient's record and not the other.
    readable, hidden = world.people
    assert world.client.get(f"/fhir/Patient/{readable.pid}", headers=world.issste).status_code == 200
    assert world.client.get(f"/fhir/Patient/{hidden.pid}", headers=world.issste).status_code == 403

    @FUZZ
    @given(sents=_requests(world))
    def issste_writes(sents: list[Sent]) -> None:
        for sent in sents:
            _send(world, sent)
        _reads_as_seeded(world, sents)

    issste_writes()
    counts = ", ".join(f"{status}: {n}" for status, n in sorted(world.statuses.items()))
    backend = "postgres" if settings.uses_postgres else "sqlite"
    print(
        f"\n{EXAMPLES} examples, {world.requests} ISSSTE requests on {backend} "
        f"in {time.monotonic() - started:.1f}s; answers by status {{{counts}}}"
    )
    assert not world.violations, f"{len(world.violations)} violations; the first ones:\n\n" + "\n\n".join(
        world.violations[:8]
    )
