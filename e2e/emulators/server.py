"""A small threaded HTTP server base for the emulators, and the record of each request.

Each emulator implements `handle(Request) -> Response`; this module owns the socket, the thread
and the bookkeeping, so the emulators stay about AWS behaviour only.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str  # raw, still percent-encoded: SigV4 canonicalises it
    headers: Message  # case-insensitive lookups, as HTTP headers are
    body: bytes
    client: str

    def params(self) -> dict[str, str]:
        """Query parameters merged with a form-encoded body (the AWS query protocol's two forms)."""
        merged = dict(parse_qsl(self.query, keep_blank_values=True))
        content_type = self.headers.get("Content-Type", "")
        if self.body and content_type.startswith("application/x-www-form-urlencoded"):
            merged.update(parse_qsl(self.body.decode(), keep_blank_values=True))
        return merged


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Call:
    """One request as the emulator judged it: what tests assert on and summaries print."""

    action: str  # e.g. "AssumeRoleWithWebIdentity", "GetCallerIdentity", "GetCredentials"
    status: int
    code: str = ""  # "" on success, else the error code the client sees (e.g. "AccessDenied")
    message: str = ""  # the error message, or "" on success
    arn: str = ""  # the assumed-role ARN a success answered with
    subject: str = ""  # the token's `sub`, when one was read
    role_arn: str = ""
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.code == ""

    def summary(self) -> str:
        outcome = self.arn if self.ok else f"{self.code}: {self.message}"
        who = f" sub={self.subject}" if self.subject else ""
        return f"{self.action} -> {self.status} {outcome}{who}"


class EmulatorServer:
    """ThreadingHTTPServer on (host, port) in a daemon thread; port 0 picks a free port.

    Use as a context manager, or start()/stop(). `calls` lists every judged request in order.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.calls: list[Call] = []
        self._calls_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def summary_lines(self) -> list[str]:
        """One line per judged request, for a test's printed summary."""
        with self._calls_lock:
            return [f"{type(self).__name__}: {c.summary()}" for c in self.calls]

    def record(self, call: Call) -> None:
        with self._calls_lock:
            self.calls.append(call)

    def start(self) -> Self:
        server_class = _IPv6Server if ":" in self.host else ThreadingHTTPServer
        httpd = server_class((self.host, self.port), _handler_for(self))
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = serve_in_background(httpd, f"{type(self).__name__}:{self.port}")
        return self

    def stop(self) -> None:
        if self._httpd is not None and self._thread is not None:
            shut_down(self._httpd, self._thread)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_background(httpd: ThreadingHTTPServer, name: str) -> threading.Thread:
    """`httpd.serve_forever()` in a daemon thread, polling often enough that `shut_down`
    returns promptly."""
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    thread.start()
    return thread


def shut_down(httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
    """Stop serving, close the listening socket, and wait (5 s at most) for the thread."""
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6  # e.g. the agent's fd00:ec2::23


def _handler_for(emulator: EmulatorServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's urllib3 pool expects

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command,
                path=parts.path or "/",
                query=parts.query,
                headers=self.headers,
                body=self.rfile.read(length) if length else b"",
                client=self.client_address[0],
            )
            try:
                response = emulator.handle(request)
            except Exception as e:  # an emulator bug: answer and record it, never drop the line
                emulator.record(Call("?", 500, "InternalFailure", f"{type(e).__name__}: {e}"))
                response = Response(500, f"emulator error: {e}\n".encode(), "text/plain")
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass  # `calls` is the log; stderr noise would bury test output

    return Handler
