"""A terminating webhook loses no review: what SIGTERM does, seen from the API server's side.

Every test runs `python -m webhook serve` as a subprocess over real TLS (tests/serverproc.py).
The API server keeps a pool of keep-alive connections to the webhook and creates pods while a
rollout replaces it; with `failurePolicy: Ignore` a refused or cut connection is a pod stored
without credentials.
"""

from __future__ import annotations

import http.client
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.netns import EnterNetworkNamespace
from tests.serverproc import (
    HOST,
    ROLE_ANNOTATION,
    ROLE_ARN,
    ServerFactory,
    WebhookProcess,
    admission_review,
    client_context,
    free_port,
    make_certs,
    metric_value,
    pod,
    raw_request,
    service_account,
    wait_until,
)

pytestmark = pytest.mark.slow


JSON = {"Content-Type": "application/json"}
OBJECTS = [service_account("app", annotations={ROLE_ANNOTATION: ROLE_ARN})]
REVIEW = orjson.dumps(admission_review(pod("app"), uid="drain"))


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    with ExitStack() as stack:
        yield ServerFactory(stack, tmp_path, OBJECTS)


def connect(server: WebhookProcess) -> http.client.HTTPSConnection:
    """A keep-alive connection with one answered request on it, as in the API server's pool."""
    conn = http.client.HTTPSConnection(
        HOST, server.port, context=client_context(server.ca_pem), timeout=10
    )
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b"ok"
    return conn


def closed_by_server(conn: http.client.HTTPSConnection) -> bool:
    """The server ended this idle connection (close_notify or FIN waiting to be read)."""
    assert conn.sock is not None
    return bool(select.select([conn.sock], [], [], 0)[0])


def review_on(
    conn: http.client.HTTPSConnection, headers: dict[str, str] = JSON
) -> http.client.HTTPResponse:
    conn.request("POST", "/mutate", body=REVIEW, headers=headers)
    reply = conn.getresponse()
    body = reply.read()
    assert reply.status == 200, body
    assert b'"patch"' in body
    return reply


def refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def exit_code(server: WebhookProcess, within: float) -> int:
    try:
        return server.proc.wait(within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server was still running {within:.1f}s later")


# --------------------------------------------------------------------------- the delay


def test_during_the_delay_readiness_fails_answers_close_their_connection_and_nothing_is_refused(
    start_server: ServerFactory,
) -> None:
    server = start_server(extra_args=("--shutdown-delay=3s",))
    used, idle = connect(server), connect(server)

    signalled = time.monotonic()
    server.send_signal(signal.SIGTERM)

    # /readyz fails at once, so the endpoint is removed ...
    def readiness() -> int | None:
        with server.client() as https:
            status = https.get("/readyz").status_code
        return status if status == 503 else None

    wait_until(readiness, 1, "/readyz to fail")
    # ... a pooled connection still gets its review answered, and is closed after it ...
    assert used.sock is not None
    raw = used.sock  # http.client drops its socket on `Connection: close`; keep ours
    used.sock = None
    raw.sendall(raw_request("POST", "/mutate", REVIEW, JSON))
    answer = b""
    while chunk := raw.recv(65536):  # until the server ends the connection
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower()
    assert b'"patch"' in body
    # ... new connections are still accepted and answered ...
    with server.client() as https:
        fresh = https.post("/mutate", content=REVIEW, headers=JSON)
    assert fresh.status_code == 200 and b'"patch"' in fresh.content
    assert fresh.headers["connection"] == "close"
    # ... and an idle pooled connection is not closed under the client during the delay.
    assert time.monotonic() - signalled < 2.5, "the checks above took too long to mean much"
    assert not closed_by_server(idle)

    wait_until(lambda: closed_by_server(idle), 5, "the idle connection to close after the delay")
    assert time.monotonic() - signalled >= 3
    wait_until(lambda: refused(server.port), 2, "the listener to close after the delay")
    assert exit_code(server, 3) == 0
    raw.close()
    idle.close()


def test_a_connection_accepted_before_the_listener_closed_is_served_when_its_hello_comes_late(
    start_server: ServerFactory,
) -> None:
    """A client that connected before the listener closed but has not sent its TLS hello yet
    (a loaded API server, a slow network) is a review on its way, not an idle connection: it is
    answered, as Go's Shutdown waits for new connections."""
    server = start_server(extra_args=("--shutdown-delay=1s",))
    raw = socket.create_connection((HOST, server.port), timeout=10)
    server.send_signal(signal.SIGTERM)
    wait_until(lambda: refused(server.port), 5, "the listener to close after the delay")
    # The drain checks every 50 ms; give it many chances to close the silent connection.
    time.sleep(0.5)
    tls = client_context(server.ca_pem).wrap_socket(raw, server_hostname="localhost")
    tls.sendall(raw_request("POST", "/mutate", REVIEW, JSON))
    answer = b""
    while chunk := tls.recv(65536):
        answer += chunk
    tls.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower()
    assert b'"patch"' in body
    assert exit_code(server, 5) == 0


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM, signal.SIGTERM)])
def test_sigint_or_a_second_sigterm_skips_the_delay(
    start_server: ServerFactory, signals: tuple[signal.Signals, ...]
) -> None:
    server = start_server(extra_args=("--shutdown-delay=60s",))
    for sig in signals:
        server.send_signal(sig)
        time.sleep(0.2)
    assert exit_code(server, 5) == 0


# --------------------------------------------------------------------------- unsent answers


@dataclass
class LargeAnswer:
    """A review whose answer is ~16 MB (the uid is echoed), sent and left unread."""

    tls: ssl.SSLSocket
    uid: str
    received: bytes = b""
    error: str = ""
    reader: threading.Thread = field(init=False)

    def read_all(self) -> None:
        chunks = []
        try:
            while chunk := self.tls.recv(1 << 20):
                chunks.append(chunk)
        except (OSError, ssl.SSLError) as err:
            self.error = repr(err)
        self.received = b"".join(chunks)

    def body(self) -> bytes:
        head, _, body = self.received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        assert len(body) == length, f"{self.uid[:8]}: {len(body)} of {length} bytes ({self.error})"
        return body


def test_sigterm_lets_large_finished_answers_drain_to_slow_clients(
    start_server: ServerFactory,
) -> None:
    server = start_server(extra_args=("--max-request-bytes=40000000", "--shutdown-timeout=60s"))
    ctx = client_context(server.ca_pem)
    answers = []
    for number in range(12):
        uid = f"{number:02d}" + "u" * (16 * 1024 * 1024)
        raw = socket.create_connection((HOST, server.port), timeout=30)
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(
            raw_request(
                "POST", "/mutate", orjson.dumps(admission_review(pod("app"), uid=uid)), JSON
            )
        )
        answers.append(LargeAnswer(tls, uid))
    # Every answer is complete on the server's side (counted after its last byte was handed to
    # the transport) and almost all of it still unsent: nobody reads.
    wait_until(
        lambda: metric_value(server, "http_request_count", 'code="200",path="/mutate"') >= 12,
        60,
        "the 12 answers to be written",
        interval=0.2,
    )
    server.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the drain is under way before anyone reads
    for answer in answers:
        answer.reader = threading.Thread(target=answer.read_all, daemon=True)
        answer.reader.start()
    for answer in answers:
        answer.reader.join(60)
    for answer in answers:
        assert orjson.loads(answer.body())["response"]["uid"] == answer.uid
        answer.tls.close()
    assert exit_code(server, 10) == 0


# --------------------------------------------------------------------------- --reuse-port


@dataclass
class Load:
    """Reviews from threads counting failures of any kind: half on keep-alive connections
    reopened when the server says close (as the API server's pool does), half on a new
    connection for every review (the moment a listener closes is the risky one)."""

    port: int
    ca_pem: bytes
    threads: int = 4
    stop: threading.Event = field(default_factory=threading.Event)
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    workers: list[threading.Thread] = field(default_factory=list)

    def _run(self, headers: dict[str, str]) -> None:
        ctx = client_context(self.ca_pem)
        conn: http.client.HTTPSConnection | None = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPSConnection(HOST, self.port, context=ctx, timeout=10)
            try:
                reply = review_on(conn, headers)
            except Exception as err:
                with self.lock:
                    self.failures.append(repr(err))
                conn.close()
                conn = None
                continue
            with self.lock:
                self.ok += 1
            if reply.getheader("connection") == "close":
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def start(self) -> None:
        for number in range(self.threads):
            headers = JSON if number % 2 else {**JSON, "Connection": "close"}
            worker = threading.Thread(target=self._run, args=(headers,), daemon=True)
            worker.start()
            self.workers.append(worker)

    def count(self) -> int:
        with self.lock:
            return self.ok

    def finish(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(15)


def test_reuse_port_lets_two_servers_share_a_port_and_one_drain_while_the_other_serves(
    network_namespace: EnterNetworkNamespace, start_server: ServerFactory, tmp_path: Path
) -> None:
    # The setting the chart README asks of hostNetwork nodes: the kernel hands the connections
    # still queued on a closing listener to another listener of its SO_REUSEPORT group. Without
    # it (the kernel's default) it resets them, whatever the server does: with 8 clients, 5 of
    # 35 runs of this test lost a review to a reset or an EOF in the TLS handshake; 0 of 60 with
    # it (40 of them with two CPU burners running).
    network_namespace({"net.ipv4.tcp_migrate_req": "1"})
    cert_files = make_certs(tmp_path / "shared-certs")
    port = free_port()
    flags = ("--reuse-port", "--shutdown-delay=1s")
    first = start_server(cert_files=cert_files, ports=(port, free_port()), extra_args=flags)
    second = start_server(cert_files=cert_files, ports=(port, free_port()), extra_args=flags)
    load = Load(port, cert_files.ca.cert_pem)
    load.start()
    try:
        wait_until(lambda: load.count() >= 100, 20, "reviews through the shared port")
        served_by_first = metric_value(first, "http_request_count", 'path="/mutate"')
        assert served_by_first > 0, "the kernel sent every connection to one server"
        first.send_signal(signal.SIGTERM)
        assert exit_code(first, 10) == 0
        after = load.count()
        wait_until(lambda: load.count() >= after + 100, 20, "reviews after the first server left")
    finally:
        load.finish()
    assert load.failures == []
    assert metric_value(second, "http_request_count", 'path="/mutate"') > 0


# --------------------------------------------------------------------------- the kernel's view


def test_the_kernel_queues_tell_an_answer_arrived_and_a_request_is_coming() -> None:
    from webhook.server.connection import kernel_unread, kernel_unsent

    with socket.create_server((HOST, 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
        with client, server_side:
            client.sendall(b"POST /mutate HTTP/1.1\r\n")  # a request on its way in
            wait_until(lambda: kernel_unread(server_side.fileno()) == 23, 2, "the bytes to land")
            server_side.setblocking(False)
            sent = 0
            try:
                while True:  # an answer larger than every buffer on the way, unread
                    sent += server_side.send(b"x" * 65536)
            except BlockingIOError:
                pass
            assert kernel_unsent(server_side.fileno()) > 0
            received = 0
            while received < sent:
                received += len(client.recv(1 << 20))
            wait_until(
                lambda: kernel_unsent(server_side.fileno()) == 0, 2, "every byte acknowledged"
            )
