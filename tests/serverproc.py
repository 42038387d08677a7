"""The webhook server as a real subprocess, for tests that speak real TLS to it.

`running_webhook(...)` starts `python -m webhook serve` on free loopback ports with a
certificate made by `webhook.certs`, waits (with a deadline) until both listeners answer,
and always terminates the process afterwards. The server's stderr goes to a file so tests
can read its logs while it runs; on teardown the log is written to stderr, which pytest
shows with the report of a failed test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from tests.builders import admission_review  # noqa: F401  (re-exported for the HTTPS tests)
from webhook import certs

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ROLE_ARN = "arn:aws:iam::111122223333:role/app"
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

_T = TypeVar("_T")


# --------------------------------------------------------------------------- polling


def wait_until(
    probe: Callable[[], _T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> _T:
    """Call `probe` until it returns something other than None/False; fail after `timeout`.

    Exceptions raised by `probe` count as "not yet"; the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
        except Exception as err:
            last_error = err
        else:
            if value is not None and value is not False:
                return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertFiles:
    ca: certs.CertKeyPair
    serving: certs.CertKeyPair
    ca_cert: Path
    tls_cert: Path
    tls_key: Path


def new_pair(
    ca: certs.CertKeyPair | None = None, ca_name: str = "webhook-test-ca"
) -> tuple[certs.CertKeyPair, certs.CertKeyPair]:
    """(CA, serving certificate for DNS `localhost` and IP 127.0.0.1)."""
    ca = ca or certs.generate_ca(ca_name, 2)
    return ca, certs.generate_serving_cert(ca, ["localhost"], [HOST], 1)


def make_certs(directory: Path, ca_name: str = "webhook-test-ca") -> CertFiles:
    ca, serving = new_pair(ca_name=ca_name)
    paths = certs.write_bundle(directory, ca, serving)
    return CertFiles(ca, serving, paths.ca_cert, paths.tls_cert, paths.tls_key)


def client_context(
    ca_pem: bytes,
    *,
    minimum_version: ssl.TLSVersion | None = None,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A verifying client context trusting only `ca_pem`."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    if minimum_version is not None:
        ctx.minimum_version = minimum_version
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    return ctx


def handshake_in_memory(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> ssl.SSLObject:
    """A complete TLS handshake between two contexts through memory BIOs: the client's side,
    or the ssl.SSLError either side raised."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = True
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                done = False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done:
            return client
    raise AssertionError("the handshake did not finish")


TLS_APPLICATION_DATA = 23


class RecordCountingTLSClient:
    """HTTP/1.1 over TLS on a plain socket through memory BIOs, so a test sees the TLS records
    the server sent, not only the bytes they carried."""

    def __init__(self, port: int, ca_pem: bytes, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context(ca_pem).wrap_bio(
            self.incoming, self.outgoing, server_hostname="localhost"
        )
        self.received = bytearray()  # every byte from the server, TLS framing included
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_pending()
                self._receive()
        self._send_pending()

    def close(self) -> None:
        self.sock.close()

    def _send_pending(self) -> None:
        if pending := self.outgoing.read():
            self.sock.sendall(pending)

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.received += chunk
        self.incoming.write(chunk)

    def exchange(self, request: bytes) -> tuple[bytes, int]:
        """Send one request; (the answer, how many application-data records carried it).
        The answer is read to its Content-Length."""
        start = len(self.received)
        self.tls.write(request)
        self._send_pending()
        answer = b""
        while True:
            try:
                answer += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive()
                continue
            end = answer.find(b"\r\n\r\n")
            if end >= 0:
                match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", answer[:end])
                if match and len(answer) >= end + 4 + int(match[1]):
                    break
        return answer, self._records_since(start)

    def _records_since(self, start: int) -> int:
        """Application-data records in the bytes received from `start` (a record boundary:
        every earlier answer was read whole) to now."""
        data, offset, count = bytes(self.received), start, 0
        while offset + 5 <= len(data):
            length = int.from_bytes(data[offset + 3 : offset + 5], "big")
            count += data[offset] == TLS_APPLICATION_DATA
            offset += 5 + length
        return count


# --------------------------------------------------------------------------- objects & reviews


def service_account(
    name: str, namespace: str = "default", annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def write_objects(path: Path, items: Sequence[dict[str, Any]]) -> None:
    """Write a `kind: List` (JSON is YAML) atomically, as an editor or kubectl would."""
    data = orjson.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)})
    certs.write_file_atomic(path, data, 0o644)


def pod(
    service_account_name: str = "app",
    name: str = "pod-1",
    env: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "busybox"}
    if env:
        container["env"] = list(env)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"serviceAccountName": service_account_name, "containers": [container]},
    }


# --------------------------------------------------------------------------- the process


def free_port(dual_stack: bool = False) -> int:
    """A port free on 127.0.0.1 (or, with `dual_stack`, on every address of both families)."""
    if dual_stack:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
            return int(sock.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerExited(AssertionError):
    pass


@dataclass
class WebhookProcess:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    ca_pem: bytes
    log_path: Path

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        return self.log_text().splitlines()

    def client(self, ca_pem: bytes | None = None, **kwargs: Any) -> httpx.Client:
        """An HTTPS client for the webhook port verifying against the CA (default: the one
        the server started with)."""
        kwargs.setdefault("timeout", 10.0)
        return httpx.Client(
            base_url=self.url, verify=client_context(ca_pem or self.ca_pem), **kwargs
        )

    def metrics_client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 10.0)
        return httpx.Client(base_url=self.metrics_url, **kwargs)

    def _probe_ready(self) -> bool:
        if self.proc.poll() is not None:
            raise ServerExited(f"server exited with code {self.proc.returncode} while starting")
        try:
            with self.client(timeout=2.0) as https, self.metrics_client(timeout=2.0) as plain:
                return (
                    https.get("/healthz").status_code == 200
                    and plain.get("/metrics").status_code == 200
                )
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self._probe_ready():
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"server not ready within {timeout:.0f}s; log:\n{self.log_text()}"
                )
            time.sleep(0.05)

    def send_signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode


def serve_command(
    *,
    port: int,
    metrics_port: int,
    tls_cert: Path,
    tls_key: Path,
    objects: Path,
    extra_args: Sequence[str] = (),
    bind_address: str | None = HOST,
) -> list[str]:
    """`serve` on the given ports; `bind_address=None` keeps the default (every address).
    Tests stop servers with SIGTERM, so the drain's delay is off unless a test asks for it."""
    bind = ["--bind-address", bind_address] if bind_address is not None else []
    return [
        sys.executable,
        "-m",
        "webhook",
        "serve",
        *bind,
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--tls-cert",
        str(tls_cert),
        "--tls-key",
        str(tls_key),
        "--objects",
        str(objects),
        "-v=4",
        "--shutdown-delay=0s",
        *extra_args,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_webhook(
    *,
    tls_cert: Path,
    tls_key: Path,
    ca_pem: bytes,
    objects: Path,
    log_path: Path,
    extra_args: Sequence[str] = (),
    attempts: int = 3,
    bind_address: str | None = HOST,
    ports: tuple[int, int] | None = None,
) -> WebhookProcess:
    """Start and wait until ready; retries on fresh ports if another process took ours
    (unless `ports` are given: (https, metrics))."""
    for attempt in range(1, attempts + 1):
        port, metrics_port = ports or (
            free_port(bind_address is None),
            free_port(bind_address is None),
        )
        command = serve_command(
            port=port,
            metrics_port=metrics_port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            objects=objects,
            extra_args=extra_args,
            bind_address=bind_address,
        )
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                command, cwd=REPO, env=_env(), stdout=log_file, stderr=subprocess.STDOUT
            )
        server = WebhookProcess(proc, port, metrics_port, ca_pem, log_path)
        try:
            server.wait_ready()
            return server
        except ServerExited:
            retry = ports is None and attempt < attempts
            if retry and "address already in use" in server.log_text().lower():
                continue
            raise AssertionError(
                f"server exited with code {proc.returncode} while starting; log:\n"
                f"{server.log_text()}"
            ) from None
        except BaseException:
            server.stop()
            raise
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def running_webhook(
    *,
    tls_cert: Path,
    tls_key: Path,
    ca_pem: bytes,
    objects: Path,
    log_path: Path,
    extra_args: Sequence[str] = (),
    bind_address: str | None = HOST,
    ports: tuple[int, int] | None = None,
) -> Iterator[WebhookProcess]:
    """A started server, always terminated afterwards; its log is echoed to stderr (shown by
    pytest for failing tests)."""
    server = start_webhook(
        tls_cert=tls_cert,
        tls_key=tls_key,
        ca_pem=ca_pem,
        objects=objects,
        log_path=log_path,
        extra_args=extra_args,
        bind_address=bind_address,
        ports=ports,
    )
    try:
        yield server
    finally:
        server.stop()
        print(f"--- webhook server log ({log_path}) ---", file=sys.stderr)
        print(server.log_text(), file=sys.stderr)


def run_serve_expecting_exit(
    *,
    tls_cert: Path,
    tls_key: Path,
    objects: Path,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run `serve` that is expected to refuse its configuration and exit on its own."""
    command = serve_command(
        port=free_port(),
        metrics_port=free_port(),
        tls_cert=tls_cert,
        tls_key=tls_key,
        objects=objects,
        extra_args=extra_args,
    )
    return subprocess.run(
        command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


class ServerFactory:
    """Starts dedicated servers (own certificates and objects file unless given) inside an
    ExitStack, so a test fixture can hand out `start(...)` and stop them all afterwards."""

    def __init__(self, stack: contextlib.ExitStack, directory: Path, objects: Sequence[Any]):
        self.stack, self.directory, self.objects = stack, directory, list(objects)
        self.count = 0

    def __call__(
        self,
        *,
        extra_args: Sequence[str] = (),
        cert_files: CertFiles | None = None,
        objects: Path | None = None,
        bind_address: str | None = HOST,
        ports: tuple[int, int] | None = None,
    ) -> WebhookProcess:
        self.count += 1
        directory = self.directory / f"server-{self.count}"
        directory.mkdir()
        if cert_files is None:
            cert_files = make_certs(directory / "certs")
        if objects is None:
            objects = directory / "objects.json"
            write_objects(objects, self.objects)
        return self.stack.enter_context(
            running_webhook(
                tls_cert=cert_files.tls_cert,
                tls_key=cert_files.tls_key,
                ca_pem=cert_files.ca.cert_pem,
                objects=objects,
                log_path=directory / "server.log",
                extra_args=extra_args,
                bind_address=bind_address,
                ports=ports,
            )
        )


def raw_request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """An HTTP/1.1 request as bytes, with Content-Length when there is a body."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def metric_value(server: WebhookProcess, name: str, *label_parts: str) -> float:
    """The sum of `name`'s samples whose labels contain every one of `label_parts`."""
    with server.metrics_client() as plain:
        text = plain.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            labels, _, value = line.rpartition(" ")
            if all(part in labels for part in label_parts):
                total += float(value)
    return total
