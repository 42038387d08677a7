"""`/mutate` is answered by the connection itself, without ASGI (webhook/server/protocol.py).
With `--record-dir` the app is wrapped and /mutate takes the ASGI endpoint instead, so a pair
of real servers over real TLS shows the direct path answers exactly as the endpoint does, and
copes with what HTTP clients do: 100-continue, large and chunked bodies, pipelining.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

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
    service_account,
)

from .test_server_faults import read_answer

LIMIT_FLAG = "--max-request-bytes=300000"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, WebhookProcess]]:
    objects = [service_account("app", annotations={ROLE_ANNOTATION: ROLE_ARN})]
    work = tmp_path_factory.mktemp("direct")
    with ExitStack() as stack:
        start = ServerFactory(stack, work, objects)
        yield {
            "direct": start(extra_args=(LIMIT_FLAG,)),
            "asgi": start(extra_args=(LIMIT_FLAG, f"--record-dir={Path(work) / 'records'}")),
        }


def connect(server: WebhookProcess) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, server.port), timeout=10)
    return client_context(server.ca_pem).wrap_socket(raw, server_hostname="localhost")


def request(body: bytes, *, content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    return (
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body
    )


def exchange(server: WebhookProcess, data: bytes) -> tuple[bytes, bytes]:
    with connect(server) as sock:
        sock.sendall(data)
        return read_answer(sock)


def review_body(**annotations: str) -> bytes:
    p = pod("app", name="web-1")
    if annotations:
        p["metadata"]["annotations"] = annotations
    return orjson.dumps(admission_review(p))


CASES = {
    "a mutation": request(review_body()),
    "bad JSON": request(b"{not json"),
    "wrong content type": request(review_body(), content_type=b"text/plain"),
    "declared too large": (
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 300001\r\n\r\n"
    ),
    "HTTP/1.0": request(review_body()).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "Connection: close": request(review_body(), extra=b"Connection: close\r\n"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_direct_path_answers_as_the_asgi_endpoint_does(
    servers: dict[str, WebhookProcess], case: str
) -> None:
    direct = exchange(servers["direct"], CASES[case])
    asgi = exchange(servers["asgi"], CASES[case])
    assert direct == asgi


def test_a_client_expecting_100_continue_gets_it_then_the_answer(
    servers: dict[str, WebhookProcess],
) -> None:
    body = review_body()
    head = request(body, extra=b"Expect: 100-continue\r\n")[: -len(body)]
    with connect(servers["direct"]) as sock:
        sock.sendall(head)
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, answer = read_answer(sock)
    assert status.startswith(b"HTTP/1.1 200") and b'"patch"' in answer


def test_a_body_beyond_uvicorns_read_high_water_mark_is_read_and_answered(
    servers: dict[str, WebhookProcess],
) -> None:
    body = review_body(note="x" * 200_000)  # > 64 KiB, under the 300,000-byte limit
    status, answer = exchange(servers["direct"], request(body))
    assert status.startswith(b"HTTP/1.1 200") and b'"patch"' in answer


def test_a_chunked_body_over_the_limit_gets_413(servers: dict[str, WebhookProcess]) -> None:
    chunk = b"x" * 100_000
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    head = (
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    answers = [exchange(servers[name], head + framed) for name in ("direct", "asgi")]
    assert answers[0] == answers[1]
    assert answers[0][0].startswith(b"HTTP/1.1 413")


def test_pipelined_reviews_are_answered_in_order_on_one_connection(
    servers: dict[str, WebhookProcess],
) -> None:
    bodies = [review_body(), request(b"{not json"), review_body()]
    data = request(bodies[0]) + bodies[1] + request(bodies[2])
    with connect(servers["direct"]) as sock:
        sock.sendall(data)
        answers = [read_answer(sock) for _ in range(3)]
    assert [b'"patch"' in body for _, body in answers] == [True, False, True]
    assert b'"allowed":false' in answers[1][1]


def test_every_direct_answer_is_counted_like_any_other(
    servers: dict[str, WebhookProcess],
) -> None:
    server = servers["direct"]

    def answered() -> float:
        with server.metrics_client() as client:
            text = client.get("/metrics").text
        for line in text.splitlines():
            if (
                line.startswith("http_request_count{")
                and 'code="200"' in line
                and "/mutate" in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = answered()
    with connect(server) as sock:
        for _ in range(5):
            sock.sendall(request(review_body()))
            read_answer(sock)
    assert answered() == before + 5
