"""A Deployment written for upstream starts and is reachable the same way (issue 9 §1):
dual-stack listeners by default, ports checked at start, stray positional arguments ignored.
"""

from __future__ import annotations

import base64
import errno
import socket
import ssl
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import orjson
import pytest

from tests import serverproc
from tests.netns import EnterNetworkNamespace
from tests.serverproc import (
    ROLE_ANNOTATION,
    ROLE_ARN,
    CertFiles,
    ServerFactory,
    admission_review,
    pod,
    raw_request,
    service_account,
    write_objects,
)
from webhook import certs
from webhook.server import listen
from webhook.server.listen import Endpoint, ListenError

OBJECTS = [service_account("app", annotations={ROLE_ANNOTATION: ROLE_ARN})]
JSON = {"Content-Type": "application/json"}


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    with ExitStack() as stack:
        yield ServerFactory(stack, tmp_path, OBJECTS)


def dual_stack_certs(directory: Path) -> CertFiles:
    ca = certs.generate_ca("dual-stack-ca", 2)
    serving = certs.generate_serving_cert(ca, ["localhost"], ["127.0.0.1", "::1"], 1)
    paths = certs.write_bundle(directory, ca, serving)
    return CertFiles(ca, serving, paths.ca_cert, paths.tls_cert, paths.tls_key)


def review_over(host: str, port: int, ca_pem: bytes) -> bytes:
    """One review over TLS to `host` (a literal address of either family); the answer body."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect((host, port))
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            body = orjson.dumps(admission_review(pod("app")))
            tls.sendall(raw_request("POST", "/mutate", body, {**JSON, "Connection": "close"}))
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return body


# --------------------------------------------------------------------------- dual stack


@pytest.mark.slow
@needs_ipv6
def test_default_flags_serve_https_and_metrics_on_ipv6_and_ipv4_loopback(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    cert_files = dual_stack_certs(tmp_path / "certs")
    server = start_server(cert_files=cert_files, bind_address=None)
    for host in ("::1", "127.0.0.1"):
        assert b'"patch"' in review_over(host, server.port, cert_files.ca.cert_pem), host
    for url in (f"http://[::1]:{server.metrics_port}", f"http://127.0.0.1:{server.metrics_port}"):
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200, url
    assert f"[::]:{server.port} (https)" in server.log_text()


def test_without_ipv6_the_default_falls_back_to_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    real_socket = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object, **kwargs: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(listen.socket, "socket", no_ipv6)
    sockets = listen.bind(Endpoint("", 0))
    try:
        assert [sock.family for sock in sockets] == [socket.AF_INET]
        assert sockets[0].getsockname()[0] == "0.0.0.0"
    finally:
        for sock in sockets:
            sock.close()


def test_an_explicit_ipv4_address_binds_ipv4_only() -> None:
    sockets = listen.bind(Endpoint("127.0.0.1", 0))
    try:
        assert [(s.family, s.getsockname()[0]) for s in sockets] == [(socket.AF_INET, "127.0.0.1")]
    finally:
        for sock in sockets:
            sock.close()


def test_a_port_in_use_is_a_listen_error_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=rf"127\.0\.0\.1:{port}: .*[Aa]ddress already in use"):
            listen.bind(Endpoint("127.0.0.1", port))


def test_two_listeners_share_a_port_only_with_reuse_port() -> None:
    alone = listen.bind(Endpoint("127.0.0.1", 0))
    try:
        with pytest.raises(ListenError):
            listen.bind(Endpoint("127.0.0.1", alone[0].getsockname()[1]))
    finally:
        alone[0].close()
    first = listen.bind(Endpoint("127.0.0.1", 0, reuse_port=True))
    try:
        second = listen.bind(Endpoint("127.0.0.1", first[0].getsockname()[1], reuse_port=True))
        second[0].close()
    finally:
        first[0].close()


@pytest.mark.parametrize(("content", "migrate"), [("1\n", True), ("0\n", False), (None, None)])
def test_the_kernel_says_whether_a_closing_listener_hands_on_its_queue(
    tmp_path: Path, content: str | None, migrate: bool | None
) -> None:
    setting = tmp_path / "tcp_migrate_req"
    if content is not None:
        setting.write_text(content)
    assert listen.queued_connections_migrate(setting) is migrate


REUSE_PORT_LINE = "--reuse-port: net.ipv4.tcp_migrate_req is "


@pytest.mark.slow
@pytest.mark.parametrize(
    ("migrate", "level", "says"),
    [
        ("0", "warning", "are reset, and with failurePolicy: Ignore"),
        ("1", "info", "go to another listener on the port"),
    ],
)
def test_reuse_port_says_at_start_whether_the_kernel_would_reset_a_closing_listeners_queue(
    network_namespace: EnterNetworkNamespace,
    start_server: ServerFactory,
    migrate: str,
    level: str,
    says: str,
) -> None:
    network_namespace({"net.ipv4.tcp_migrate_req": migrate})
    server = start_server(extra_args=("--reuse-port",))
    with server.client() as https:
        assert https.get("/healthz").text == "ok"
    found = [line for line in server.log_lines() if REUSE_PORT_LINE in line]
    assert len(found) == 1, server.log_text()
    assert f"level={level}" in found[0] and f"tcp_migrate_req is {migrate} here" in found[0]
    assert says in found[0]
    if migrate == "0":
        assert "set it to 1 on the node" in found[0]


@pytest.mark.slow
def test_no_reuse_port_nothing_said_about_the_kernel(start_server: ServerFactory) -> None:
    server = start_server()
    assert not [line for line in server.log_lines() if "tcp_migrate_req" in line]


# --------------------------------------------------------------------------- ports


def _serve_exit(tmp_path: Path, *extra: str) -> tuple[int, str]:
    cert_files = serverproc.make_certs(tmp_path / "certs")
    objects = tmp_path / "objects.json"
    write_objects(objects, OBJECTS)
    result = serverproc.run_serve_expecting_exit(
        tls_cert=cert_files.tls_cert, tls_key=cert_files.tls_key, objects=objects, extra_args=extra
    )
    return result.returncode, result.stderr + result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--port=99999",), "argument --port: port 99999 is out of range (1-65535)"),
        (("--metrics-port=0",), "argument --metrics-port: port 0 is out of range (1-65535)"),
        (("--port=-1",), "argument --port: port -1 is out of range (1-65535)"),
        (
            ("--port=8443", "--metrics-port=8443"),
            "--port and --metrics-port are both 8443; the two listeners need two ports",
        ),
    ],
)
def test_bad_ports_are_refused_at_start_with_one_clear_line(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    code, output = _serve_exit(tmp_path, *flags)
    assert code == 2, output
    assert message in output
    assert "Traceback" not in output


# --------------------------------------------------------------------------- positional arguments


@pytest.mark.slow
def test_stray_positional_arguments_are_ignored_with_a_warning_naming_them(
    start_server: ServerFactory,
) -> None:
    # As a manifest written for upstream has it: pflag reads the bare boolean as true and
    # keeps `true` as an ignored positional argument.
    server = start_server(
        extra_args=("--sts-regional-endpoint", "true", "--aws-default-region", "eu-west-1", "stray")
    )
    with server.client() as https:
        answer = https.post(
            "/mutate", content=orjson.dumps(admission_review(pod("app"))), headers=JSON
        )
    assert b"AWS_STS_REGIONAL_ENDPOINTS" in base64.b64decode(answer.json()["response"]["patch"])
    warnings = [line for line in server.log_lines() if "ignoring positional arguments" in line]
    assert len(warnings) == 1, server.log_text()
    assert "'true' 'stray'" in warnings[0]
    assert "--sts-regional-endpoint=false" in warnings[0]  # how to say false
