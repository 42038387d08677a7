"""Clients that misbehave, found by a fault matrix (issue 9 §3): each is answered or cut off
as Go's net/http would, and never holds a connection for ever.

A real `serve` subprocess over real TLS; short timeouts keep the tests quick. What needs a
clock (a keep-alive connection idling past the head deadline, zero meaning no limit) is
specified with an injected one in tests/test_server_transport.py.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack

import orjson
import pytest

from tests.serverproc import (
    HOST,
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

TIMEOUT_FLAGS = ("--tls-handshake-timeout=500ms", "--read-header-timeout=500ms")
JSON = {"Content-Type": "application/json"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookProcess]:
    objects = [service_account("app", annotations={ROLE_ANNOTATION: ROLE_ARN})]
    with ExitStack() as stack:
        start = ServerFactory(stack, tmp_path_factory.mktemp("faults"), objects)
        yield start(extra_args=TIMEOUT_FLAGS)


def tls_connect(server: WebhookProcess) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, server.port), timeout=10)
    return client_context(server.ca_pem).wrap_socket(raw, server_hostname="localhost")


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed `sock` (EOF or reset); fails after `seconds`."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLEOFError):
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {seconds}s")
    return time.monotonic() - started


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head, body


# --------------------------------------------------------------------------- slow and idle


def test_a_tcp_connection_that_never_starts_tls_is_closed_after_the_handshake_timeout(
    server: WebhookProcess,
) -> None:
    idle = [socket.create_connection((HOST, server.port), timeout=10) for _ in range(50)]
    try:
        waited = [closed_within(sock, 5) for sock in idle]
    finally:
        for sock in idle:
            sock.close()
    assert max(waited) < 3


def test_an_unfinished_tls_handshake_is_closed_after_the_handshake_timeout(
    server: WebhookProcess,
) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, and no more
        assert closed_within(raw, 5) < 3


def test_an_unfinished_request_head_is_closed_after_the_read_header_timeout(
    server: WebhookProcess,
) -> None:
    with tls_connect(server) as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: app")
        assert closed_within(tls, 5) < 3


# --------------------------------------------------------------------------- odd requests


def test_an_h2c_upgrade_request_on_mutate_is_ignored_and_the_review_answered(
    server: WebhookProcess,
) -> None:
    body = orjson.dumps(admission_review(pod("app"), uid="uid-h2c"))
    headers = {
        **JSON,
        "Connection": "Upgrade, HTTP2-Settings",
        "Upgrade": "h2c",
        "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA",
    }
    with tls_connect(server) as tls:
        tls.sendall(raw_request("POST", "/mutate", body, headers))
        head, answer = read_answer(tls)
        assert head.startswith(b"HTTP/1.1 200 "), head
        response = orjson.loads(answer)["response"]
        assert response["uid"] == "uid-h2c" and response["allowed"] is True
        patch = orjson.loads(base64.b64decode(response["patch"]))
        assert {"name": "AWS_ROLE_ARN", "value": ROLE_ARN} in [
            env for op in patch if op["path"].endswith("/env") for env in op["value"]
        ]
        # The connection goes on as HTTP/1.1.
        tls.sendall(raw_request("GET", "/healthz"))
        assert read_answer(tls)[1] == b"ok"


def test_plain_http_on_the_https_port_gets_gos_400(server: WebhookProcess) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as raw:
        raw.sendall(raw_request("GET", "/healthz"))
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer == (
        b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    )


def test_the_server_still_serves_after_the_faults(server: WebhookProcess) -> None:
    with server.client() as https:
        review = https.post(
            "/mutate", content=orjson.dumps(admission_review(pod("app"))), headers=JSON
        )
    assert review.status_code == 200 and "patch" in review.json()["response"]
    assert server.proc.poll() is None
