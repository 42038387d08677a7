"""What the operator reads when the API server refuses or is unreachable: the Status
message decoded (not escaped JSON), one line per retry, and no hidden urllib3 retries."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client as k8s_client

from webhook.sources.kube_client import KubeAPIError, KubeClient, status_message

FORBIDDEN = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'serviceaccounts is forbidden: User "system:anonymous" cannot list resource',
    "reason": "Forbidden",
    "code": 403,
}


def test_a_status_body_becomes_its_message_and_reason() -> None:
    assert status_message(json.dumps(FORBIDDEN).encode()) == (
        'serviceaccounts is forbidden: User "system:anonymous" cannot list resource'
        " (reason Forbidden)"
    )


def test_a_body_that_is_not_a_status_is_shown_as_text_on_one_line() -> None:
    assert status_message(b"<html>\n  bad gateway\n</html>") == "<html> bad gateway </html>"
    assert status_message(b"") == "(empty body)"


class _Forbidding(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = json.dumps(FORBIDDEN).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def forbidding_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forbidding)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _client(url: str) -> KubeClient:
    config = k8s_client.Configuration()
    config.host = url
    return KubeClient(k8s_client.ApiClient(config))


def test_a_refusal_carries_the_http_status_and_the_decoded_message(forbidding_api: str) -> None:
    with pytest.raises(KubeAPIError) as caught:
        _client(forbidding_api).open("GET", "/api/v1/serviceaccounts", [], timeout=5)

    assert caught.value.status == 403
    text = str(caught.value)
    assert text.startswith("GET /api/v1/serviceaccounts: HTTP 403: serviceaccounts is forbidden")
    assert '\\"' not in text and "{" not in text


def test_an_unreachable_api_server_fails_once_without_urllib3_retry_noise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as caught:
        _client(f"http://127.0.0.1:{port}").open("GET", "/api/v1/serviceaccounts", [], timeout=2)

    assert "Retry" not in str(caught.value)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
