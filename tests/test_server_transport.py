"""`/mutate` has one way in: the FastAPI app's router, on stock uvicorn (issue 16).

- `serve`, the in-process tests (httpx's ASGITransport) and `--record-dir` go through the same
  app object and the same /mutate endpoint;
- the guards in front of uvicorn's protocol (webhook/server/connection.py): the request head's
  deadline, taken with an injected clock, the 1 MiB head limit, `Upgrade:` ignored;
- the crash that the private protocol had: a review waiting out the grace period with 20,000
  requests pipelined behind it on one connection.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest

from tests.serverproc import (
    HOST,
    REPO,
    ROLE_ANNOTATION,
    ROLE_ARN,
    ServerFactory,
    WebhookProcess,
    admission_review,
    client_context,
    pod,
    raw_request,
    service_account,
)
from webhook.core.settings import MutationSettings
from webhook.server import app as app_module
from webhook.server.app import MutateEndpoint, WebhookContext, create_webhook_app
from webhook.server.connection import (
    HEADER_TOO_LARGE,
    PLAIN_HTTP_ANSWER,
    GuardedConnection,
    Listening,
    connection_class,
)
from webhook.server.grace import GraceLookup
from webhook.server.listen import Endpoint, bind
from webhook.server.metrics import Metrics
from webhook.server.runner import Listener, ServerGroup, Timeouts
from webhook.sources.store import IdentityStore

JSON = {"Content-Type": "application/json"}
OBJECTS = [service_account("app", annotations={ROLE_ANNOTATION: ROLE_ARN})]


# --------------------------------------------------------------------------- one app, one handler


def context(store: IdentityStore | None = None) -> WebhookContext:
    store = store or IdentityStore(MutationSettings())
    return WebhookContext(
        MutationSettings(), store, GraceLookup(store, 0, None), Metrics(), lambda: True
    )


def test_mutate_is_a_route_of_the_fastapi_router_first_in_line() -> None:
    app = create_webhook_app(context())
    first = app.router.routes[0]
    assert getattr(first, "path", None) == "/mutate"
    assert isinstance(getattr(first, "endpoint", None), MutateEndpoint)
    assert getattr(first, "methods", "unset") is None  # any method, as upstream


@pytest.fixture
def counted_endpoint(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of the /mutate endpoint, by path, wherever the request came from."""
    calls: list[str] = []
    real = MutateEndpoint.__call__

    async def counting(self: MutateEndpoint, scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await real(self, scope, receive, send)

    monkeypatch.setattr(app_module.MutateEndpoint, "__call__", counting)
    return calls


def test_the_server_and_the_in_process_client_answer_through_the_same_endpoint(
    counted_endpoint: list[str],
) -> None:
    """The runner serves the app it is given, /mutate included: no second transport that
    could answer reviews without this endpoint (the old fast path did, unnoticed)."""
    ctx = context()
    webhook = create_webhook_app(ctx)
    review = orjson.dumps(admission_review(pod(), uid="one-way-in"))

    async def scenario() -> tuple[int, int]:
        sockets = bind(Endpoint(HOST, 0))
        port = sockets[0].getsockname()[1]
        group = ServerGroup(
            [Listener(webhook, sockets)], timeouts=Timeouts(shutdown_delay=0, read_header=0)
        )
        serving = asyncio.create_task(group.serve())
        while not group.started:
            await asyncio.sleep(0.01)
        try:
            async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as tcp:
                over_tcp = (await tcp.post("/mutate", content=review, headers=JSON)).status_code
            in_process = httpx.ASGITransport(app=webhook)
            async with httpx.AsyncClient(transport=in_process, base_url="http://test") as asgi:
                direct = (await asgi.post("/mutate", content=review, headers=JSON)).status_code
        finally:
            group.stop(delay=False)
            await serving
        return over_tcp, direct

    assert asyncio.run(scenario()) == (200, 200)
    assert counted_endpoint == ["/mutate", "/mutate"]
    assert ctx.metrics.counters.value("http_request_count", "POST", "/mutate", "200") == 2


TRACED_REVIEW = """
import asyncio, sys
import httpx, orjson
from opentelemetry import trace
from tests.builders import admission_review, pod
from webhook.core.settings import MutationSettings
from webhook.server.app import WebhookContext, create_webhook_app
from webhook.server.grace import GraceLookup
from webhook.server.metrics import Metrics
from webhook.sources.store import IdentityStore

spans = []

class Tracer(trace.NoOpTracer):
    def start_span(self, name, *args, **kwargs):
        spans.append(name)
        return super().start_span(name, *args, **kwargs)

    def start_as_current_span(self, name, *args, **kwargs):
        spans.append(name)
        return super().start_as_current_span(name, *args, **kwargs)

class Provider(trace.TracerProvider):  # an SDK's, not the no-op one FastAPI skips
    def get_tracer(self, *args, **kwargs):
        return Tracer()

trace.set_tracer_provider(Provider())  # as an OpenTelemetry SDK set up in the process would
store = IdentityStore(MutationSettings())
app = create_webhook_app(
    WebhookContext(MutationSettings(), store, GraceLookup(store, 0, None), Metrics(), lambda: True)
)

async def main():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        review = orjson.dumps(admission_review(pod(), uid="traced"))
        answer = await c.post("/mutate", content=review, headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        assert (await c.get("/healthz")).status_code == 200

asyncio.run(main())
print(orjson.dumps(spans).decode())
"""


def test_no_review_is_traced_even_when_the_process_has_an_opentelemetry_tracer() -> None:
    """FastAPI's native OpenTelemetry is off: spans of reviews would carry pod data nobody
    asked to export, and asking for providers costs every request. A subprocess, because a
    tracer provider can be set once per process."""
    result = subprocess.run(
        [sys.executable, "-c", TRACED_REVIEW],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == []


# --------------------------------------------------------------------------- guards, in process


@dataclass
class FakeTransport:
    reading: bool = True
    closing: bool = False
    aborted: bool = False
    written: list[bytes] = field(default_factory=list)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0


class RecordingHTTP:
    """Stands in for uvicorn's protocol: what reaches it."""

    def __init__(self, **arguments: Any) -> None:
        self.arguments = arguments
        self.received = b""
        self.shutdowns = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def shutdown(self) -> None:
        self.shutdowns += 1


def guarded_in_loop(
    read_header_timeout: float = 1.0, max_header_bytes: int = 1 << 20
) -> tuple[GuardedConnection, FakeTransport]:
    """A connection as uvicorn would make it, on a fake transport, in the running loop."""
    listening = Listening(RecordingHTTP, read_header_timeout, max_header_bytes=max_header_bytes)
    connection = connection_class(listening)(config="passed through")
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


def uvicorns_transport(connection: GuardedConnection) -> asyncio.Transport:
    """The transport uvicorn's protocol was given to write to."""
    transport: asyncio.Transport = cast(RecordingHTTP, connection.http).transport
    return transport


def guarded(read_header_timeout: float = 1.0, max_header_bytes: int = 1 << 20) -> Any:
    """A connection as uvicorn would make it, on a fake transport, outside any loop time."""

    async def make() -> tuple[GuardedConnection, FakeTransport]:
        return guarded_in_loop(read_header_timeout, max_header_bytes)

    return asyncio.run(make())


def test_uvicorns_arguments_and_every_byte_reach_uvicorns_protocol() -> None:
    connection, _ = guarded()
    request = raw_request("POST", "/mutate", b"{}", JSON)
    connection.data_received(request[:7])
    connection.data_received(request[7:])
    assert connection.http.arguments == {"config": "passed through"}
    assert connection.http.received == request


def test_the_first_head_is_due_read_header_timeout_after_the_connection_started() -> None:
    connection, _ = guarded(read_header_timeout=1.0)
    start = connection.head_since
    assert start is not None
    assert not connection.head_overdue(start + 0.9)
    assert connection.head_overdue(start + 1.1)


def test_a_keep_alive_connection_may_idle_far_longer_than_the_read_header_timeout() -> None:
    connection, _ = guarded(read_header_timeout=1.0)
    connection.data_received(raw_request("GET", "/healthz"))
    assert connection.head_since is None
    assert not connection.head_overdue(connection.loop.time() + 3600)
    assert not connection.busy  # between two requests: the drain may close it


def test_an_unfinished_head_is_due_from_its_first_byte() -> None:
    connection, _ = guarded(read_header_timeout=1.0)
    connection.data_received(raw_request("GET", "/healthz"))
    connection.data_received(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
    began = connection.head_since
    assert began is not None and connection.busy
    assert not connection.head_overdue(began + 0.5)
    assert connection.head_overdue(began + 1.5)


def test_the_head_clock_stops_while_uvicorn_does_not_read() -> None:
    """Pipelined requests wait unread while the ones before them are answered."""
    connection, transport = guarded(read_header_timeout=1.0)
    connection.data_received(b"GET /healthz HTTP/1.1\r\n")
    began = connection.head_since
    assert began is not None
    transport.reading = False
    assert not connection.head_overdue(began + 10)
    transport.reading = True
    assert not connection.head_overdue(began + 10.5)
    assert connection.head_overdue(began + 11.5)


def test_zero_read_header_timeout_means_no_limit_as_in_go() -> None:
    connection, _ = guarded(read_header_timeout=0)
    connection.data_received(b"GET /healthz HTTP/1.1\r\n")
    assert not connection.head_overdue(connection.loop.time() + 3600)


@pytest.mark.parametrize(("limit", "armed"), [(5.0, True), (0.0, False), (-1.0, False)])
def test_the_tls_handshake_deadline_is_armed_at_accept_unless_zero_as_in_go(
    limit: float, armed: bool
) -> None:
    async def accept() -> GuardedConnection:
        listening = Listening(
            RecordingHTTP, 1.0, tls=ssl.create_default_context(), tls_handshake_timeout=limit
        )
        connection = connection_class(listening)()
        connection.connection_made(FakeTransport())  # type: ignore[arg-type]
        return connection

    connection = asyncio.run(accept())
    assert (connection.expiry is not None) is armed
    assert not connection.started  # uvicorn's protocol gets the connection after TLS only
    if connection.expiry is not None:
        connection.expiry.cancel()


def test_a_tls_connection_is_busy_until_its_first_request_so_the_drain_keeps_it() -> None:
    async def accept() -> tuple[GuardedConnection, FakeTransport]:
        listening = Listening(RecordingHTTP, 1.0, tls=ssl.create_default_context())
        connection = connection_class(listening)()
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        return connection, transport

    connection, transport = asyncio.run(accept())
    assert connection.busy  # accepted, nothing received: the client's hello is on its way
    connection.data_received(b"PO")  # plain HTTP or TLS? not told yet
    assert connection.busy
    if connection.expiry is not None:
        connection.expiry.cancel()

    refused, transport = asyncio.run(accept())
    refused.data_received(raw_request("GET", "/healthz"))  # plain HTTP on the TLS port
    assert transport.written == [PLAIN_HTTP_ANSWER]
    assert not refused.busy  # answered Go's 400: nothing is on its way
    if refused.expiry is not None:
        refused.expiry.cancel()


def test_a_head_over_the_limit_is_answered_gos_431_and_not_passed_on() -> None:
    connection, transport = guarded(max_header_bytes=1000)
    connection.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    connection.data_received(b"X-Filler: " + b"a" * 2000)
    assert transport.written == [HEADER_TOO_LARGE] and transport.closing
    assert b"X-Filler" not in connection.http.received
    connection.data_received(b"more of the same")
    assert b"more" not in connection.http.received  # nothing after the answer either


def test_a_large_body_is_not_a_large_head() -> None:
    connection, transport = guarded(max_header_bytes=1000)
    body = b"{" + b" " * 5000 + b"}"
    request = raw_request("POST", "/mutate", body, JSON)
    connection.data_received(request[:100])
    connection.data_received(request[100:])
    assert transport.written == [] and connection.http.received == request


@pytest.mark.parametrize("upgrade", ["Upgrade: h2c", "upgrade:websocket", "UPGRADE : h2c"])
def test_upgrade_headers_are_renamed_so_the_request_is_answered_as_http_1_1(upgrade: str) -> None:
    connection, _ = guarded()
    body = orjson.dumps({"upgrade": "in the body is left alone"})
    head = f"POST /mutate HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n{upgrade}\r\n"
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    connection.data_received(request)
    received = connection.http.received
    assert re.search(rb"\r\nupgrade\s*:", received, re.IGNORECASE) is None
    assert b"\r\nX-Ignored-Upgrade" in received and received.endswith(body)


def test_a_body_read_after_its_head_is_passed_on_untouched() -> None:
    connection, _ = guarded()
    body = b"text\r\nUpgrade: h2c\r\n"
    request = raw_request("POST", "/mutate", body, {"Content-Type": "text/plain"})
    head_end = request.index(b"\r\n\r\n") + 4
    connection.data_received(request[:head_end])
    connection.data_received(request[head_end:])
    assert connection.http.received == request


def test_draining_closes_an_idle_connection_through_uvicorns_shutdown() -> None:
    connection, _ = guarded()
    connection.data_received(raw_request("GET", "/healthz"))
    connection.close_gracefully()
    assert connection.http.shutdowns == 1


# --------------------------------------------------------------------------- one write per answer


def test_what_uvicorn_writes_in_one_turn_of_the_loop_reaches_the_transport_as_one_write() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], int, int]:
        connection, transport = guarded_in_loop()
        outgoing = uvicorns_transport(connection)
        outgoing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        outgoing.write(b"{}")
        during = list(transport.written)
        held, unsent = outgoing.get_write_buffer_size(), connection.unsent_bytes()
        await asyncio.sleep(0)  # the end of this turn
        return during, transport.written, held, unsent

    during, after, held, unsent = asyncio.run(scenario())
    assert during == []
    assert after == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert held == unsent == 40  # a drain sees held bytes as unsent


def test_closing_sends_what_is_held_first_and_aborting_drops_it() -> None:
    async def scenario() -> tuple[FakeTransport, FakeTransport]:
        closed, closed_transport = guarded_in_loop()
        uvicorns_transport(closed).write(b"answer")
        uvicorns_transport(closed).close()
        aborted, aborted_transport = guarded_in_loop()
        uvicorns_transport(aborted).write(b"answer")
        uvicorns_transport(aborted).abort()
        await asyncio.sleep(0)
        return closed_transport, aborted_transport

    closed, aborted = asyncio.run(scenario())
    assert closed.written == [b"answer"] and closed.closing
    assert aborted.written == [] and aborted.aborted


def test_nothing_is_written_to_a_transport_closed_underneath() -> None:
    async def scenario() -> FakeTransport:
        connection, transport = guarded_in_loop()
        uvicorns_transport(connection).write(b"late")
        transport.abort()  # e.g. the drain's deadline
        await asyncio.sleep(0)
        return transport

    assert asyncio.run(scenario()).written == []


# --------------------------------------------------------------------------- a real server


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    with ExitStack() as stack:
        yield ServerFactory(stack, tmp_path, OBJECTS)


def tls_connect(server: WebhookProcess) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, server.port), timeout=30)
    return client_context(server.ca_pem).wrap_socket(raw, server_hostname="localhost")


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data


def test_a_request_head_over_1_mib_is_answered_431_and_a_large_one_under_it_served(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    with tls_connect(server) as tls:
        tls.sendall(raw_request("GET", "/healthz", headers={"X-Big": "a" * 512 * 1024}))
        assert tls.recv(65536).startswith(b"HTTP/1.1 200 ")

    with tls_connect(server) as tls:
        sender_errors: list[BaseException] = []

        def send_8_mib() -> None:
            try:
                tls.sendall(raw_request("GET", "/healthz", headers={"X-Big": "a" * (8 << 20)}))
            except OSError as err:  # the server stopped reading and closed: expected
                sender_errors.append(err)

        sender = threading.Thread(target=send_8_mib, daemon=True)
        sender.start()
        answer = read_until_closed(tls)
        sender.join(30)
    assert answer == HEADER_TOO_LARGE
    assert server.proc.poll() is None


def test_a_review_waiting_out_the_grace_period_with_20000_requests_pipelined_behind_it(
    start_server: ServerFactory,
) -> None:
    """The reproduction from issue 16: the private protocol answered 325 of them and hung."""
    server = start_server(extra_args=("--service-account-lookup-grace-period=1s",))
    unknown = orjson.dumps(admission_review(pod("nobody-knows"), uid="waits"))
    small = raw_request("GET", "/healthz")
    total = 20_001
    payload = raw_request("POST", "/mutate", unknown, JSON) + small * (total - 1)

    async def exchange() -> list[bytes]:
        # One event loop writes and reads: an SSLSocket shared by a writer and a reader
        # thread is not safe (OpenSSL's SSL object is not), and failed this test at random.
        reader, writer = await asyncio.open_connection(
            HOST, server.port, ssl=client_context(server.ca_pem), server_hostname="localhost"
        )
        writer.write(payload)
        sending = asyncio.ensure_future(writer.drain())
        statuses: list[bytes] = []
        buffer = b""
        while len(statuses) < total:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 30)
            assert chunk, f"connection closed after {len(statuses)} of {total} answers"
            buffer += chunk
            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                head = buffer[:end]
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                if len(buffer) < end + 4 + length:
                    break
                if not statuses:
                    review = orjson.loads(buffer[end + 4 : end + 4 + length])
                    assert review["response"]["uid"] == "waits"
                statuses.append(head[:12])
                buffer = buffer[end + 4 + length :]
        await sending
        writer.close()
        # Closed before the loop is: a transport left to the collector warns (filterwarnings).
        await asyncio.wait_for(writer.wait_closed(), 30)
        return statuses

    statuses = asyncio.run(exchange())
    assert len(statuses) == total and set(statuses) == {b"HTTP/1.1 200"}
    log = server.log_text()
    assert "Traceback" not in log and "never retrieved" not in log
