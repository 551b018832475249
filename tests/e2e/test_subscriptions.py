"""Subscriptions end to end: a real ``ehr serve`` notifies a real HTTP listener on loopback.

R4 criteria subscriptions (subscription.html, rest-hook) and topic-based ones (Subscriptions R5 Backport IG
for R4 1.1.0): every matching write notified once, in event-number order; a server killed while delivering
loses nothing after a restart (duplicates carry the same event number); a listener that is down is retried
until it answers; an institution without the patient's consent learns nothing about that patient.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehr_core.settings import Settings
from tests.support.access import consent
from tests.support.server import REPO, _server_env, _stop, _wait_until_ready, free_port, running_worker
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e]

TOPICS = "urn:ehr-core:SubscriptionTopic"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
VITALS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}
#: Within this long a matching write is notified (polled with this deadline; never asserted otherwise).
NOTIFIED_WITHIN = 5.0


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class Listener:
    """An HTTP endpoint on loopback recording what it is sent; ``failing`` answers 503 to everything.

    Its path is its own (``/hook-<random>``): a port the system hands out again can still be the endpoint of
    another test's subscription (a server of the other xdist worker retrying its closed listener), and what
    such a server sends is answered 404 and never taken for this test's notifications."""

    url: str = ""
    path: str = ""
    received: list[Received] = field(default_factory=list)
    refused: int = 0
    failing: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def notifications(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def events(self) -> list[tuple[int, str]]:
        """(event number, focus) of every event notification received, in arrival order."""
        found: list[tuple[int, str]] = []
        for item in self.notifications():
            if item.body is not None and item.body.get("resourceType") == "Bundle":
                status = item.body["entry"][0]["resource"]
                for parameter in status["parameter"]:
                    if parameter["name"] == "notification-event":
                        parts = {part["name"]: part for part in parameter["part"]}
                        found.append(
                            (int(parts["event-number"]["valueString"]), parts["focus"]["valueReference"]["reference"])
                        )
            elif "x-subscription-event-number" in item.headers:
                focus = item.path.split("/", 2)[-1] if item.method == "PUT" else ""
                found.append((int(item.headers["x-subscription-event-number"]), focus))
        return found


@pytest.fixture
def listener() -> Iterator[Listener]:
    state = Listener()

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            with state.lock:
                if not self.path.startswith(state.path):
                    self.send_response(404)
                    self.end_headers()
                    return
                if state.failing:
                    state.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.loads(raw) if raw else None
                headers = {k.lower(): v for k, v in self.headers.items()}
                state.received.append(Received(self.command, self.path, headers, body))
            self.send_response(200)
            self.end_headers()

        do_POST = do_PUT = _record

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.path = f"/hook-{uuid.uuid4().hex[:12]}"
    state.url = f"http://127.0.0.1:{server.server_address[1]}{state.path}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


class Server:
    """``ehr serve`` on one data directory or schema, which the test may kill and start again."""

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.data = data
        self.env = _server_env(env)
        self.process: subprocess.Popen[bytes] | None = None
        self.base = ""

    def start(self) -> None:
        port = free_port()
        log = self.data.parent / f"server-{port}.log"
        command = [sys.executable, "-m", "fhir_api.cli", "serve", "--port", str(port), "--data", str(self.data)]
        with log.open("wb") as output:
            self.process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=output, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{port}/fhir"
        _wait_until_ready(self.process, self.base, log, 120)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def post(self, resource: dict[str, Any], institution: str = "imss") -> dict[str, Any]:
        response = httpx.post(
            f"{self.base}/{resource['resourceType']}", json=resource, headers=_as(institution), timeout=30
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def get(self, path: str, institution: str = "imss", **params: Any) -> httpx.Response:
        return httpx.get(f"{self.base}/{path}", params=params, headers=_as(institution), timeout=30)


def _as(institution: str) -> dict[str, str]:
    return {"X-EHR-Institution": institution, "Content-Type": "application/fhir+json"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    # A short backoff: a listener down for a few seconds is retried several times within the test.
    env = {
        "EHR_SUBSCRIPTION_RETRY_BASE_SECONDS": "0.2",
        "EHR_SUBSCRIPTION_RETRY_MAX_SECONDS": "1.0",
        "EHR_SUBSCRIPTION_MAX_ATTEMPTS": "1000",
    }
    if request.param == "postgres":
        settings: Settings = request.getfixturevalue("postgres_settings")
        assert settings.database_url is not None
        env |= {"EHR_DATABASE_URL": settings.database_url, "EHR_POSTGRES_SCHEMA": settings.postgres_schema}
    running = Server(tmp_path / "ehr-data", env)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _patient(server: Server, institution: str = "imss") -> str:
    return str(server.post({"resourceType": "Patient", "name": [{"family": "Gómez"}]}, institution)["id"])


def _observation(patient: str, category: dict[str, Any], code: str = "718-7") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [category],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _r4_subscription(criteria: str, endpoint: str, payload: str | None) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint, "header": ["Authorization: Bearer secret"]}
    if payload:
        channel["payload"] = payload
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": channel,
    }


def _topic_subscription(
    topic: str, endpoint: str, filters: list[str], content: str = "full-resource"
) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": f"{TOPICS}/{topic}",
        "_criteria": {
            "extension": [{"url": f"{BACKPORT}/backport-filter-criteria", "valueString": f} for f in filters]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": content}]},
        },
    }


def _active(server: Server, subscription: str, institution: str = "imss") -> None:
    wait_until(
        lambda: server.get(f"Subscription/{subscription}", institution).json().get("status") == "active",
        "the subscription to become active after its handshake",
    )


def _notified(listener: Listener, count: int, within: float = NOTIFIED_WITHIN) -> list[tuple[int, str]]:
    return wait_until(
        lambda: listener.events() if len({n for n, _ in listener.events()}) >= count else None,
        f"{count} notifications",
        timeout=within,
        seen=listener.events,
    )


def test_r4_criteria_subscription_notifies_each_matching_write_once_in_order(
    server: Server, listener: Listener
) -> None:
    patient = _patient(server)
    created = server.post(
        _r4_subscription("Observation?code=http://loinc.org|2345-7", listener.url, "application/fhir+json")
    )
    _active(server, created["id"])
    handshake = listener.notifications()[0]
    assert (handshake.method, handshake.body) == ("POST", None)
    assert handshake.headers["authorization"] == "Bearer secret"
    matching = []
    for index in range(4):
        server.post(_observation(patient, VITALS, code="8867-4"))  # another code: never notified
        matching.append(server.post(_observation(patient, LAB, code="2345-7"))["id"])
        del index
    events = _notified(listener, 4)
    assert events == [(n + 1, f"Observation/{id_}") for n, id_ in enumerate(matching)]
    puts = [item for item in listener.notifications() if item.method == "PUT"]
    assert [item.body["id"] for item in puts if item.body] == matching  # the full resource, R4 payload
    assert all(item.headers["authorization"] == "Bearer secret" for item in puts)


def test_backport_topic_subscription_and_its_operations(server: Server, listener: Listener) -> None:
    mine, other = _patient(server), _patient(server)
    created = server.post(
        _topic_subscription("laboratory-result", listener.url, [f"Observation?patient=Patient/{mine}"])
    )
    _active(server, created["id"])
    handshake = listener.notifications()[0].body
    assert handshake is not None and handshake["type"] == "history"
    kinds = {p["name"]: p for p in handshake["entry"][0]["resource"]["parameter"]}
    assert kinds["type"]["valueCode"] == "handshake"
    expected = []
    for _ in range(3):
        server.post(_observation(mine, VITALS))  # not a laboratory result
        server.post(_observation(other, LAB))  # another patient: filtered out
        expected.append(f"Observation/{server.post(_observation(mine, LAB))['id']}")
    events = _notified(listener, 3)
    assert events == [(n + 1, focus) for n, focus in enumerate(expected)]
    last = listener.notifications()[-1].body
    assert last is not None and last["entry"][1]["resource"]["resourceType"] == "Observation"

    status = server.get(f"Subscription/{created['id']}/$status")
    assert status.status_code == 200, status.text
    parameters = {p["name"]: p for p in status.json()["entry"][0]["resource"]["parameter"]}
    assert parameters["events-since-subscription-start"]["valueString"] == "3"
    assert parameters["type"]["valueCode"] == "query-status"

    replay = server.get(f"Subscription/{created['id']}/$events", eventsSinceNumber=2, eventsUntilNumber=3)
    assert replay.status_code == 200, replay.text
    replayed = [
        next(part["valueString"] for part in p["part"] if part["name"] == "event-number")
        for p in replay.json()["entry"][0]["resource"]["parameter"]
        if p["name"] == "notification-event"
    ]
    assert replayed == ["2", "3"]
    assert [e["fullUrl"].split("/fhir/")[-1] for e in replay.json()["entry"][1:]] == expected[1:]


#: How long the listener of the retry test stays down.
LISTENER_DOWN = 30.0


def test_listener_down_is_retried_until_it_answers(server: Server, listener: Listener) -> None:
    """The listener refuses everything for ``LISTENER_DOWN`` seconds: the server keeps retrying (its backoff is
    capped at a second here) and, once the listener answers, delivers every event in order."""
    patient = _patient(server)
    created = server.post(_r4_subscription("Observation?category=laboratory", listener.url, None))
    _active(server, created["id"])
    listener.failing = True
    down_since = time.monotonic()
    written = [server.post(_observation(patient, LAB))["id"] for _ in range(3)]
    wait_until(
        lambda: listener.refused >= 3, "the server to retry the refused notification", seen=lambda: listener.refused
    )
    time.sleep(max(0.0, down_since + LISTENER_DOWN - 5.0 - time.monotonic()))
    refused_before_the_end = listener.refused
    time.sleep(5.0)
    # Still retried in the outage's last seconds: the server did not give up on a listener down this long.
    assert listener.refused > refused_before_the_end
    assert listener.events() == []
    listener.failing = False
    events = wait_until(lambda: listener.events() if len(listener.events()) >= 3 else None, "the retried notifications")
    assert [number for number, _ in events] == [1, 2, 3]
    assert len(written) == 3
    assert server.get(f"Subscription/{created['id']}").json()["status"] == "active"


def test_no_notification_about_a_patient_without_consent(server: Server, listener: Listener) -> None:
    """ISSSTE subscribes to encounters elsewhere; IMSS's patient without consent stays invisible."""
    private, sharing = _patient(server, "imss"), _patient(server, "imss")
    server.post(consent(sharing, "issste"), "imss")
    created = server.post(_topic_subscription("encounter-elsewhere", listener.url, []), "issste")
    _active(server, created["id"], "issste")
    for patient in (private, sharing):
        server.post(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": f"Patient/{patient}"},
            },
            "imss",
        )
    events = _notified(listener, 1)
    assert len(events) == 1 and events[0][0] == 1
    # Ordered per subscription: had the private patient's encounter matched, it would have come first.
    focus = events[0][1]
    encounter = server.get(focus, "issste").json()
    assert encounter["subject"]["reference"] == f"Patient/{sharing}"
    everything = json.dumps([item.body for item in listener.notifications()])
    assert private not in everything


def test_a_server_killed_while_delivering_loses_nothing(server: Server, listener: Listener) -> None:
    patient = _patient(server)
    created = server.post(_topic_subscription("laboratory-result", listener.url, [], "id-only"))
    _active(server, created["id"])
    written = [f"Observation/{server.post(_observation(patient, LAB))['id']}" for _ in range(30)]
    wait_until(lambda: listener.events(), "a first notification", seen=listener.events)
    server.kill()
    server.start()
    events = wait_until(
        lambda: listener.events() if len({n for n, _ in listener.events()}) >= 30 else None,
        "every notification after the restart",
        seen=listener.events,
    )
    by_number = dict(events)
    assert sorted(by_number) == list(range(1, 31)), events
    assert [by_number[n] for n in range(1, 31)] == written, (events, written)
    # A duplicate (sent before the kill, not yet marked) is the same event number with the same focus.
    assert [(n, f) for n, f in events if by_number[n] != f] == [], (events, written)
    firsts = list(dict.fromkeys(number for number, _ in events))
    assert firsts == sorted(firsts)  # in order, duplicates aside


def test_off_set_by_the_client_stops_delivery(server: Server, listener: Listener) -> None:
    patient = _patient(server)
    stopped = server.post(_topic_subscription("laboratory-result", listener.url + "/stopped", []))
    sentinel = server.post(_topic_subscription("laboratory-result", listener.url + "/sentinel", []))
    _active(server, stopped["id"])
    _active(server, sentinel["id"])
    current = server.get(f"Subscription/{stopped['id']}").json()
    current["status"] = "off"
    response = httpx.put(f"{server.base}/Subscription/{stopped['id']}", json=current, headers=_as("imss"), timeout=30)
    assert response.status_code == 200, response.text
    written = server.post(_observation(patient, LAB))["id"]
    # Both subscriptions are matched in the same pass over the log: once the sentinel has the event, the
    # stopped one's count is final.
    wait_until(
        lambda: any(item.path.endswith("/sentinel") for item in listener.notifications() if item.body
                    and len(item.body["entry"]) > 1),
        "the sentinel's notification",
    )  # fmt: skip
    assert not [
        item for item in listener.notifications() if item.path.endswith("/stopped") and written in json.dumps(item.body)
    ]
    status = server.get(f"Subscription/{stopped['id']}/$status").json()
    parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert parameters["status"]["valueCode"] == "off"
    assert parameters["events-since-subscription-start"]["valueString"] == "0"


def test_repeated_failures_set_error_and_redirects_are_not_followed(tmp_path: Path, listener: Listener) -> None:
    """A listener that refuses every notification, and one that redirects, both end in ``error``."""
    env = {"EHR_SUBSCRIPTION_RETRY_BASE_SECONDS": "0.1", "EHR_SUBSCRIPTION_MAX_ATTEMPTS": "3"}
    running = Server(tmp_path / "ehr-data", env)
    running.start()
    try:
        listener.failing = True
        refused = running.post(_r4_subscription("Observation?category=laboratory", listener.url, None))
        # Not an allowed scheme: refused before any connection is made.
        ftp = running.post(_r4_subscription("Observation?category=laboratory", "ftp://127.0.0.1/hook", None))
        for created in (refused, ftp):
            found = wait_until(
                lambda created=created: (
                    (r := running.get(f"Subscription/{created['id']}").json())["status"] == "error" and r
                ),
                "the subscription to be set to error",
            )
            assert found["error"]
            assert int(found["meta"]["versionId"]) >= 2  # the server's status change is a new version
        assert listener.refused >= 3
        assert "endpoint not allowed" in running.get(f"Subscription/{ftp['id']}").json()["error"]
    finally:
        running.stop()


def test_referral_received_by_my_institution(server: Server, listener: Listener) -> None:
    """The referral topic: a ServiceRequest (SNOMED CT 3457005) whose performer is the subscriber."""
    patient = _patient(server, "imss")
    server.post(consent(patient, "issste"), "imss")  # the performer may read the referred patient's record
    created = server.post(_topic_subscription("referral-received", listener.url, []), "issste")
    _active(server, created["id"], "issste")

    def referral(performer: str) -> dict[str, Any]:
        return {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}],
            "subject": {"reference": f"Patient/{patient}"},
            "performer": [{"identifier": {"system": "urn:ehr-core:institution", "value": performer}}],
        }

    server.post(referral("imss-bienestar"), "imss")  # referred elsewhere: not for this subscriber
    mine = server.post(referral("issste"), "imss")["id"]
    assert _notified(listener, 1) == [(1, f"ServiceRequest/{mine}")]


def _record(curp: str | None, family: str) -> dict[str, Any]:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": family, "given": ["Miguel"]}],
        "gender": "male",
        "birthDate": "1969-02-16",
    }
    if curp:
        patient["identifier"] = [{"system": "urn:oid:2.16.840.1.113883.4.629", "value": curp}]
    return patient


def _link_events(listener: Listener, path: str) -> list[tuple[int, str, str, str, str]]:
    """(event number, focus, linked/unlinked, person, focus id in the payload) of ``path``'s notifications."""
    found = []
    for item in listener.notifications():
        if not item.path.endswith(path) or item.body is None or len(item.body["entry"]) < 2:
            continue
        status = item.body["entry"][0]["resource"]
        for parameter in status["parameter"]:
            if parameter["name"] == "notification-event":
                parts = {part["name"]: part for part in parameter["part"]}
                found.append(
                    (
                        int(parts["event-number"]["valueString"]),
                        parts["focus"]["valueReference"]["reference"],
                        parameter["extension"][0]["valueCode"],
                        parts["additional-context"]["valueReference"]["reference"],
                        item.body["entry"][1]["resource"]["id"],
                    )
                )
    return found


def test_patient_link_topic_tells_the_record_holder_of_a_link_and_its_undoing(
    server: Server, listener: Listener
) -> None:
    """ISSSTE's record matched (certain: CURP and birth date) to IMSS's person, then a steward undoes it:
    ISSSTE hears both, IMSS (whose record founded the person, and was neither linked nor unlinked) nothing."""
    imss = server.post(_topic_subscription("patient-link", listener.url + "/imss", []), "imss")
    issste = server.post(_topic_subscription("patient-link", listener.url + "/issste", []), "issste")
    _active(server, imss["id"], "imss")
    _active(server, issste["id"], "issste")
    curp = "BAUM690216HMSLRG18"
    founder = server.post(_record(curp, "Bautista Uribe"), "imss")["id"]
    server.post(_record(None, "Ortega"), "issste")  # a person of its own: no link
    linked = server.post(_record(curp, "Bautista"), "issste")["id"]
    person = server.get(f"Patient/{linked}/$person", "issste").json()["id"]
    assert person == server.get(f"Patient/{founder}/$person", "imss").json()["id"]
    steward = _as("issste") | {"X-EHR-User": "steward.ana", "X-EHR-Role": "data-steward"}
    undone = httpx.post(f"{server.base}/Patient/{linked}/$unlink", headers=steward, timeout=30)
    assert undone.status_code == 200, undone.text
    events = wait_until(
        lambda: found if len(found := _link_events(listener, "/issste")) >= 2 else None,
        "the link and the unlink",
        timeout=NOTIFIED_WITHIN,
        seen=lambda: _link_events(listener, "/issste"),
    )
    focus = f"Patient/{linked}"
    assert events == [
        (1, focus, "linked", f"Person/{person}", linked),
        (2, focus, "unlinked", f"Person/{person}", linked),
    ]
    # Both subscriptions are matched in the same pass over the log: IMSS's count is final by now.
    status = server.get(f"Subscription/{imss['id']}/$status", "imss").json()
    parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert parameters["events-since-subscription-start"]["valueString"] == "0"
    assert _link_events(listener, "/imss") == []


@pytest.mark.postgres
def test_two_servers_on_one_database_deliver_each_event_once_in_order(
    postgres_settings: Settings, tmp_path: Path, listener: Listener
) -> None:
    """Two ``ehr serve`` processes on one schema, each matching and delivering: a subscription is delivered
    by one of them at a time, so its events arrive once each, in event-number order, after one handshake."""
    assert postgres_settings.database_url is not None
    env = {
        "EHR_DATABASE_URL": postgres_settings.database_url,
        "EHR_POSTGRES_SCHEMA": postgres_settings.postgres_schema,
        "EHR_POSTGRES_POOL_SIZE": "3",  # PostgreSQL's connections are shared by every test run on the machine
    }
    first, second = Server(tmp_path / "ehr-data", env), Server(tmp_path / "ehr-data", env)
    first.start()
    second.start()  # the same data directory: the first's development master key
    try:
        patient = _patient(first)
        created = second.post(_topic_subscription("laboratory-result", listener.url, [], "id-only"))
        _active(first, created["id"])
        written = [
            f"Observation/{server.post(_observation(patient, LAB))['id']}"
            for index in range(40)
            for server in [(first, second)[index % 2]]
        ]
        wait_until(
            lambda: len(listener.events()) >= len(written),
            "every notification",
            timeout=30,
            seen=listener.events,
        )
        assert listener.events() == [(number, focus) for number, focus in enumerate(written, start=1)]
        handshakes = [item for item in listener.notifications() if item.body and len(item.body["entry"]) == 1]
        kinds = [p["valueCode"] for h in handshakes for p in h.body["entry"][0]["resource"]["parameter"]  # type: ignore[index]
                 if p["name"] == "type"]  # fmt: skip
        assert kinds == ["handshake"]
    finally:
        second.stop()
        first.stop()


@pytest.mark.postgres
def test_with_a_projection_worker_the_worker_matches_and_delivers(
    postgres_settings: Settings, tmp_path: Path, listener: Listener
) -> None:
    """``EHR_PROJECTION=worker``: the API server leaves projection to ``ehr project``, which matches and
    delivers too (README "Where it runs"), beside the resource views it applies, never before them."""
    assert postgres_settings.database_url is not None
    data = tmp_path / "ehr-data"
    env = {
        "EHR_DATABASE_URL": postgres_settings.database_url,
        "EHR_POSTGRES_SCHEMA": postgres_settings.postgres_schema,
        "EHR_POSTGRES_POOL_SIZE": "3",
        "EHR_DATA_DIR": str(data),  # one development master key for both processes
        "EHR_PROJECTION": "worker",
        "EHR_SUBSCRIPTION_RETRY_BASE_SECONDS": "0.2",
        "EHR_SUBSCRIPTION_RETRY_MAX_SECONDS": "1.0",
    }
    server = Server(data, env)
    server.start()
    try:
        with running_worker(env, tmp_path / "worker.log"):
            patient = _patient(server)
            created = server.post(
                _r4_subscription("Observation?code=http://loinc.org|2345-7", listener.url, "application/fhir+json")
            )
            _active(server, created["id"])
            written = [f"Observation/{server.post(_observation(patient, LAB, code='2345-7'))['id']}" for _ in range(3)]
            assert _notified(listener, 3) == [(n, focus) for n, focus in enumerate(written, start=1)]
    finally:
        server.stop()
