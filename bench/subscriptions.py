"""Subscriptions: notification latency (commit → listener) and write throughput with 0 and 50 subscriptions.

    .venv/bin/python -m bench.subscriptions [--backend sqlite|postgres] [--seconds 10] [--rate 100]

A real ``ehr serve`` and a listener on loopback. Latency: Observations written at ``--rate`` per second,
each matching one R4 criteria subscription; from the write's ``meta.lastUpdated`` (the server's recorded
time, the commit) to the listener receiving it (the same machine's clock), p50/p99. Throughput: creates/s
from ``--clients`` threads for ``--seconds`` per window, after ``--warmup`` seconds of the same load not
measured; windows with no subscription and with 50 active subscriptions all matching every write (50
notifications per write) alternate, ``--rounds`` pairs in the order 0, 50, 50, 0, 0, 50... (each kind as
often early as late, so the store grows alike under both), and the ratio is the median of the loaded
windows over the median of the bare ones (each window's figure is printed too). The 50 subscriptions are
created before a loaded window (their handshakes answered) and deleted after it, once their notifications
have arrived (``--drain`` seconds at most; how long it took is printed): no window starts with another's
backlog. ``--matching-only``: the 50 subscriptions stay ``requested`` (their endpoint refuses connections),
so they are matched and nothing is delivered: the ratio is the matching's cost alone. A benchmark, not a
test: nothing asserts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
HEADERS = {"X-EHR-Institution": "imss", "Content-Type": "application/fhir+json"}


class _Handler(BaseHTTPRequestHandler):
    """Records each notification's arrival (wall clock) and, for a full-resource PUT, its resource id."""

    protocol_version = "HTTP/1.1"
    record: Any = None  # set per listener process

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        type(self).record(self.command, self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = _record

    def log_message(self, *args: Any) -> None:
        pass


def _listen(control: Connection) -> None:
    """The listener process: an HTTP server on loopback, and a loop answering the benchmark's questions."""
    arrivals: dict[str, float] = {}
    times: list[float] = []
    lock = threading.Lock()

    def record(command: str, path: str) -> None:
        now = time.time()
        with lock:
            times.append(now)
            if command == "PUT":
                arrivals.setdefault(path.rsplit("/", 1)[-1], now)

    _Handler.record = staticmethod(record)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    control.send(server.server_address[1])
    while True:
        try:
            question = control.recv()
        except EOFError:
            return
        with lock:
            if question == "count":
                control.send(len(times))
            elif question == "arrivals":
                control.send(dict(arrivals))
            else:
                began, ended = question
                control.send([t for t in times if began <= t < ended])


class Listener:
    """A receiving system's endpoint, in a process of its own: in the benchmark's process its HTTP handling
    would take the interpreter lock from the client threads whose writes are being counted, so the write
    ratio would measure the listener as much as the server. It still shares the machine's two cores."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(target=_listen, args=(child,), daemon=True)
        self._process.start()
        self.url = f"http://127.0.0.1:{self._control.recv()}/hook"
        self._lock = threading.Lock()

    def _ask(self, question: Any) -> Any:
        with self._lock:
            self._control.send(question)
            return self._control.recv()

    @property
    def count(self) -> int:
        """Notifications received so far (POSTs and PUTs)."""
        return int(self._ask("count"))

    @property
    def arrivals(self) -> dict[str, float]:
        """When each full-resource notification first arrived, by resource id."""
        return dict(self._ask("arrivals"))

    def times(self, began: float, ended: float) -> list[float]:
        """Arrival times within [began, ended)."""
        return list(self._ask((began, ended)))

    def close(self) -> None:
        self._control.close()
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()


def _drop_schema(postgres_url: str, schema: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(schema)))


def _start(backend: str, data: Path, postgres_url: str, schema: str) -> tuple[subprocess.Popen[bytes], str]:
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env |= {"EHR_AUTH": "disabled-for-development", "PYTHONUNBUFFERED": "1"}
    if "EHR_SUBSCRIPTION_DELIVERY_SHARE" in os.environ:  # to compare delivery shares (bench/README.md, Subscriptions)
        env["EHR_SUBSCRIPTION_DELIVERY_SHARE"] = os.environ["EHR_SUBSCRIPTION_DELIVERY_SHARE"]
    if backend == "postgres":
        env |= {"EHR_DATABASE_URL": postgres_url, "EHR_POSTGRES_SCHEMA": schema}
    log = (data.parent / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_api.cli", "serve", "--port", str(port), "--data", str(data)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/fhir"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/metadata", timeout=10).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


#: A loopback port nothing listens on: a subscription to it stays ``requested`` (matched, its handshake
#: refused and retried with backoff), so nothing is delivered (``--matching-only``).
REFUSED = "http://127.0.0.1:9/hook"


def _subscribe(http: httpx.Client, base: str, endpoint: str, code: str) -> str:
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "bench",
        "criteria": f"Observation?code=http://loinc.org|{code}",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"},
    }
    created = http.post(f"{base}/Subscription", json=subscription, headers=HEADERS).json()
    if endpoint == REFUSED:
        return str(created["id"])  # matched from its own event on; never active
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if http.get(f"{base}/Subscription/{created['id']}", headers=HEADERS).json().get("status") == "active":
            return str(created["id"])
        time.sleep(0.05)
    raise SystemExit("a subscription never became active")


def _observation(code: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
    }


def latency(base: str, listener: Listener, rate: float, seconds: float, clients: int) -> None:
    """``clients`` threads, each pacing its writes at ``rate / clients`` per second (one client cannot reach
    100 writes/s when a write takes more than 10 ms)."""
    with httpx.Client(timeout=30) as http:
        _subscribe(http, base, listener.url, "latency-1")
    committed: dict[str, float] = {}
    lock = threading.Lock()
    start = time.monotonic()

    def client() -> None:
        interval = clients / rate
        sent = 0
        with httpx.Client(timeout=30) as http:
            while time.monotonic() - start < seconds:
                created = http.post(f"{base}/Observation", json=_observation("latency-1"), headers=HEADERS).json()
                with lock:
                    committed[created["id"]] = datetime.fromisoformat(created["meta"]["lastUpdated"]).timestamp()
                sent += 1
                pause = start + sent * interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    achieved = len(committed) / (time.monotonic() - start)
    deadline = time.monotonic() + 60
    arrivals = listener.arrivals
    while time.monotonic() < deadline and len(arrivals) < len(committed):
        time.sleep(0.05)
        arrivals = listener.arrivals
    latencies = sorted((arrivals[i] - t) * 1000 for i, t in committed.items() if i in arrivals)
    if not latencies:
        print("latency: no notification arrived")
        return
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"notification latency commit→listener at {achieved:.0f} writes/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {latencies[-1]:.1f} ms ({len(latencies)}/{len(committed)} notified)"
    )


def throughput(base: str, clients: int, seconds: float, code: str) -> tuple[float, int]:
    """Creates per second from ``clients`` threads for ``seconds``, and the creates."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop:
                response = http.post(f"{base}/Observation", json=_observation(code), headers=HEADERS)
                if response.status_code == 201:
                    done[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started), sum(done)


def _streaming(listener: Listener, began: float, ended: float) -> str:
    """Notifications per second over [began, ended) (fewest, most) and the longest silence: delivery that
    streams has no empty second while events are due; delivery in blocking rounds has long silences."""
    times = sorted(listener.times(began, ended))
    seconds = [0] * max(1, int(ended - began))
    for t in times:
        seconds[min(len(seconds) - 1, int(t - began))] += 1
    gaps = [b - a for a, b in zip([began, *times], [*times, ended], strict=True)]
    return (
        f"notifications per second: fewest {min(seconds)}, most {max(seconds)}; "
        f"longest silence {max(gaps) * 1000:.0f} ms"
    )


def _drain(listener: Listener, expected: int, seconds: float) -> float:
    """Wait until ``expected`` notifications have arrived (at most ``seconds``); the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < seconds and listener.count < expected:
        time.sleep(0.05)
    return time.monotonic() - began


def _phases(rounds: int) -> list[bool]:
    """Whether each window has the subscriptions: 0, 50, 50, 0, 0, 50... (pairs in alternating order)."""
    return [kind for n in range(rounds) for kind in ((False, True) if n % 2 == 0 else (True, False))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of windows (0 and 50 subscriptions)")
    parser.add_argument("--drain", type=float, default=120.0, help="the longest wait for a window's backlog")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--subscriptions", type=int, default=50)
    parser.add_argument(
        "--matching-only",
        action="store_true",
        help="the 50 subscriptions' endpoint refuses connections: matched, not delivered (the matching's cost)",
    )
    args = parser.parse_args()
    listener = Listener()
    with tempfile.TemporaryDirectory() as directory:
        schema = f"bench_sub_{int(time.time())}"
        process, base = _start(args.backend, Path(directory) / "ehr-data", args.postgres_url, schema)
        try:
            print(f"backend: {args.backend}; the machine may be shared: figures are noisy")
            latency(base, listener, args.rate, args.seconds, args.clients)
            throughput(base, args.clients, args.warmup, "throughput")  # warm-up, not measured
            endpoint = REFUSED if args.matching_only else listener.url
            kind = "requested (endpoint refusing: matched, not delivered)" if args.matching_only else "active"
            figures: dict[bool, list[float]] = {False: [], True: []}
            subscribed: list[str] = []
            with httpx.Client(timeout=30) as http:
                for loaded in _phases(args.rounds):
                    if loaded and not subscribed:
                        subscribed = [_subscribe(http, base, endpoint, "throughput") for _ in range(args.subscriptions)]
                    if not loaded and subscribed:
                        for sid in subscribed:
                            http.delete(f"{base}/Subscription/{sid}", headers=HEADERS)
                        subscribed = []
                    received = listener.count
                    began = time.time()
                    rate, creates = throughput(base, args.clients, args.seconds, "throughput")
                    ended = time.time()
                    figures[loaded].append(rate)
                    if not loaded:
                        print(f"write throughput, 0 subscriptions: {rate:.0f} creates/s ({args.clients} clients)")
                        continue
                    during = listener.count - received
                    print(
                        f"write throughput, {args.subscriptions} {kind} subscriptions matching every write: "
                        f"{rate:.0f} creates/s ({during} notifications received meanwhile)"
                    )
                    print(f"  meanwhile: {_streaming(listener, began, ended)}")
                    if not args.matching_only:
                        waited = _drain(listener, received + creates * args.subscriptions, args.drain)
                        print(
                            f"  the rest ({received + creates * args.subscriptions - listener.count} missing) "
                            f"after {waited:.1f} s"
                        )
                for sid in subscribed:
                    http.delete(f"{base}/Subscription/{sid}", headers=HEADERS)
            bare, loaded_rates = figures[False], figures[True]
            pairs = ", ".join(f"{b / a:.2f}" for a, b in zip(bare, loaded_rates, strict=True))
            print(f"ratio per pair of windows: {pairs}")
            print(
                f"ratio (median with / median without, {len(bare)} windows each): "
                f"{statistics.median(loaded_rates) / statistics.median(bare):.2f}"
            )
        finally:
            process.terminate()
            process.wait(30)
            listener.close()
            if args.backend == "postgres":
                _drop_schema(args.postgres_url, schema)


if __name__ == "__main__":
    main()
