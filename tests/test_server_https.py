"""The HTTPS webhook server as the API server sees it: a real process, real TLS, real sockets.

Every test talks to `python -m webhook serve` started as a subprocess (see tests/serverproc.py)
with a certificate made by `webhook.certs`, and verifies the server against the generated CA.
One shared server answers the read-only specifications; tests that change files, signal the
process or need other flags start their own.
"""

from __future__ import annotations

import base64
import copy
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import serverproc
from tests.serverproc import (
    HOST,
    ROLE_ANNOTATION,
    ROLE_ARN,
    CertFiles,
    RecordCountingTLSClient,
    WebhookProcess,
    admission_review,
    client_context,
    handshake_in_memory,
    make_certs,
    new_pair,
    pod,
    raw_request,
    running_webhook,
    service_account,
    wait_until,
    write_objects,
)

pytestmark = pytest.mark.slow


MAX_REQUEST_BYTES = 64 * 1024
JSON = {"Content-Type": "application/json"}
TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
# Looks like a projected ServiceAccount token (a JWT); must never reach a log line.
FAKE_JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ."
    "eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphcHAifQ."
    "c2lnbmF0dXJlLW5vdC1yZWFsbHktYS1zaWduYXR1cmU"
)
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")

BASE_OBJECTS = [
    service_account("app", annotations={ROLE_ANNOTATION: ROLE_ARN}),
    service_account("plain"),
]


# --------------------------------------------------------------------------- fixtures


@dataclass
class Shared:
    server: WebhookProcess
    certs: CertFiles
    objects: Path
    directory: Path


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    directory = tmp_path_factory.mktemp("shared-webhook")
    cert_files = make_certs(directory / "certs")
    objects = directory / "objects.json"
    write_objects(objects, BASE_OBJECTS)
    with running_webhook(
        tls_cert=cert_files.tls_cert,
        tls_key=cert_files.tls_key,
        ca_pem=cert_files.ca.cert_pem,
        objects=objects,
        log_path=directory / "server.log",
        extra_args=[f"--max-request-bytes={MAX_REQUEST_BYTES}"],
    ) as server:
        yield Shared(server, cert_files, objects, directory)


@pytest.fixture
def shared(shared_server: Shared) -> Iterator[Shared]:
    """The shared server; what it logged during this test is shown if the test fails."""
    offset = len(shared_server.server.log_text())
    yield shared_server
    print("--- shared webhook server log during this test ---", file=sys.stderr)
    print(shared_server.server.log_text()[offset:], file=sys.stderr)


@pytest.fixture
def client(shared: Shared) -> Iterator[httpx.Client]:
    with shared.server.client() as https:
        yield https


StartServer = Callable[..., WebhookProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start a dedicated server (own certificates and objects file unless given)."""
    with ExitStack() as stack:
        count = 0

        def start(
            *,
            extra_args: tuple[str, ...] = (),
            cert_files: CertFiles | None = None,
            objects: Path | None = None,
        ) -> WebhookProcess:
            nonlocal count
            count += 1
            directory = tmp_path / f"server-{count}"
            directory.mkdir()
            if cert_files is None:
                cert_files = make_certs(directory / "certs")
            if objects is None:
                objects = directory / "objects.json"
                write_objects(objects, BASE_OBJECTS)
            return stack.enter_context(
                running_webhook(
                    tls_cert=cert_files.tls_cert,
                    tls_key=cert_files.tls_key,
                    ca_pem=cert_files.ca.cert_pem,
                    objects=objects,
                    log_path=directory / "server.log",
                    extra_args=extra_args,
                )
            )

        yield start


# --------------------------------------------------------------------------- helpers


def post(
    client: httpx.Client, review: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = review if isinstance(review, bytes) else orjson.dumps(review)
    return client.post("/mutate", content=body, headers=headers or JSON)


def response_of(http_response: httpx.Response) -> dict[str, Any]:
    assert http_response.status_code == 200, http_response.text
    assert http_response.headers["content-type"].startswith("application/json")
    document = orjson.loads(http_response.content)
    assert isinstance(document, dict)
    return document


def patch_ops(response: dict[str, Any]) -> list[dict[str, Any]]:
    ops = orjson.loads(base64.b64decode(response["patch"]))
    assert isinstance(ops, list)
    return ops


def mutated_pod(name: str = "pod-1") -> dict[str, Any]:
    """What an `app` pod looks like after the webhook's patch (upstream's defaults)."""
    expected = pod("app", name=name)
    expected["spec"]["volumes"] = [
        {
            "name": "aws-iam-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": "sts.amazonaws.com",
                            "expirationSeconds": 86400,
                            "path": "token",
                        }
                    }
                ]
            },
        }
    ]
    container = expected["spec"]["containers"][0]
    container["env"] = [
        {"name": "AWS_ROLE_ARN", "value": ROLE_ARN},
        {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
    ]
    container["volumeMounts"] = [
        {"name": "aws-iam-token", "readOnly": True, "mountPath": TOKEN_DIR}
    ]
    return expected


def is_mutated_for_app(http_response: httpx.Response) -> bool:
    response = response_of(http_response)["response"]
    return response["allowed"] is True and "patch" in response


def tls_handshake(port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> str:
    """Connect, complete the handshake, return the negotiated TLS version."""
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        version = tls.version()
        assert version is not None
        return version


def _allow_legacy_tls(ctx: ssl.SSLContext, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    """Let `ctx` speak TLS 1.0 up to `maximum` (OpenSSL 3 needs security level 0 below 1.2)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def _can_negotiate_tls11(cert_files: CertFiles) -> bool:
    """Whether this OpenSSL can speak TLS 1.1 at all: an in-memory handshake with itself."""
    try:
        client_ctx = _allow_legacy_tls(
            client_context(cert_files.ca.cert_pem), ssl.TLSVersion.TLSv1_1
        )
        server_ctx = _allow_legacy_tls(
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.TLSVersion.TLSv1_1
        )
        server_ctx.load_cert_chain(cert_files.tls_cert, cert_files.tls_key)
    except (ssl.SSLError, ValueError):
        return False
    try:
        return handshake_in_memory(client_ctx, server_ctx).version() == "TLSv1.1"
    except ssl.SSLError:
        return False


def metric_samples(text: str, name: str) -> dict[str, float]:
    """{labels-text: value} for every sample of exactly `name`."""
    samples: dict[str, float] = {}
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            samples[match.group(1) or ""] = float(match.group(2))
    return samples


# --------------------------------------------------------------------------- 1. TLS


def test_tls_handshake_verifies_against_the_generated_ca_for_localhost_and_127_0_0_1(
    shared: Shared,
) -> None:
    ctx = client_context(shared.certs.ca.cert_pem)
    assert tls_handshake(shared.server.port, ctx, "localhost") in ("TLSv1.2", "TLSv1.3")
    assert tls_handshake(shared.server.port, ctx, HOST) in ("TLSv1.2", "TLSv1.3")
    with shared.server.client() as https:
        assert https.get("/healthz").text == "ok"
    stranger_ca, _ = new_pair(ca_name="some-other-ca")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(shared.server.port, client_context(stranger_ca.cert_pem))


def test_tls_1_1_client_is_refused_by_default(shared: Shared) -> None:
    if not ssl.HAS_TLSv1_1 or not _can_negotiate_tls11(shared.certs):
        pytest.skip("the local OpenSSL cannot offer TLS 1.1")
    legacy = _allow_legacy_tls(client_context(shared.certs.ca.cert_pem), ssl.TLSVersion.TLSv1_1)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_handshake(shared.server.port, legacy)
    # The same client allowed to go up to 1.2 gets in: it was the version that was refused.
    modern = _allow_legacy_tls(client_context(shared.certs.ca.cert_pem), ssl.TLSVersion.TLSv1_2)
    assert tls_handshake(shared.server.port, modern) == "TLSv1.2"


def test_tls_min_version_1_3_refuses_a_tls_1_2_only_client(start_server: StartServer) -> None:
    server = start_server(extra_args=("--tls-min-version=1.3",))
    tls12_only = client_context(server.ca_pem, maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_handshake(server.port, tls12_only)
    assert tls_handshake(server.port, client_context(server.ca_pem)) == "TLSv1.3"


def test_by_default_a_tls12_client_offering_only_cbc_is_refused_and_gcm_gets_in(
    shared: Shared,
) -> None:
    def tls12(ciphers: str) -> ssl.SSLContext:
        ctx = client_context(shared.certs.ca.cert_pem, maximum_version=ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers(ciphers)
        return ctx

    # Go's default CBC-SHA suites and OpenSSL's default CBC-SHA256/384 ones.
    for cbc in (
        "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA",
        "ECDHE+AES+SHA256:ECDHE+AES+SHA384:!AESGCM",
    ):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            tls_handshake(shared.server.port, tls12(cbc))
    assert tls_handshake(shared.server.port, tls12("ECDHE+AESGCM")) == "TLSv1.2"
    assert tls_handshake(shared.server.port, tls12("ECDHE+CHACHA20")) == "TLSv1.2"


def test_tls_cipher_suites_takes_openssl_names(start_server: StartServer) -> None:
    server = start_server(
        extra_args=(
            "--tls-cipher-suites=ECDHE-ECDSA-AES256-GCM-SHA384,ECDHE-RSA-AES256-GCM-SHA384",
        )
    )

    def tls12(ciphers: str) -> ssl.SSLContext:
        ctx = client_context(server.ca_pem, maximum_version=ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers(ciphers)
        return ctx

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_handshake(server.port, tls12("ECDHE+AESGCM+AES128"))
    assert tls_handshake(server.port, tls12("ECDHE+AESGCM+AES256")) == "TLSv1.2"


def test_unknown_tls_cipher_suite_exits_2_with_one_line_naming_it(tmp_path: Path) -> None:
    cert_files = make_certs(tmp_path / "certs")
    objects = tmp_path / "objects.json"
    write_objects(objects, BASE_OBJECTS)
    result = serverproc.run_serve_expecting_exit(
        tls_cert=cert_files.tls_cert,
        tls_key=cert_files.tls_key,
        objects=objects,
        extra_args=("--tls-cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_MADE_UP_SUITE",),
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    naming = [line for line in result.stderr.splitlines() if "TLS_MADE_UP_SUITE" in line]
    assert len(naming) == 1, result.stderr
    assert naming[0].startswith("pod-identity-webhook serve: error:"), result.stderr
    assert "cipher suite" in naming[0]


# --------------------------------------------------------------------------- 2. /mutate


def test_v1_review_is_echoed_and_its_json_patch_adds_the_web_identity_env_mount_and_volume(
    client: httpx.Client,
) -> None:
    original = pod("app")
    document = response_of(post(client, admission_review(original, uid="uid-v1")))
    assert document["apiVersion"] == "admission.k8s.io/v1"
    assert document["kind"] == "AdmissionReview"
    response = document["response"]
    assert response["uid"] == "uid-v1"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(copy.deepcopy(original), patch_ops(response))
    assert patched == mutated_pod()


def test_v1beta1_review_is_answered_as_v1beta1(client: httpx.Client) -> None:
    review = admission_review(pod("app"), uid="uid-beta", version="admission.k8s.io/v1beta1")
    document = response_of(post(client, review))
    assert document["apiVersion"] == "admission.k8s.io/v1beta1"
    assert document["kind"] == "AdmissionReview"
    assert document["response"]["uid"] == "uid-beta"
    assert jsonpatch.apply_patch(pod("app"), patch_ops(document["response"])) == mutated_pod()


def test_each_answer_leaves_in_one_tls_record_on_a_kept_alive_connection(shared: Shared) -> None:
    """uvicorn writes a head and a body; the server joins them: one encryption, one send."""
    body = orjson.dumps(admission_review(pod("app"), uid="one-record"))
    request = raw_request("POST", "/mutate", body, {"Content-Type": "application/json"})
    client = RecordCountingTLSClient(shared.server.port, shared.certs.ca.cert_pem)
    try:
        # The first exchange may share its bytes with TLS 1.3's session tickets.
        client.exchange(raw_request("GET", "/healthz"))
        answers = [client.exchange(request) for _ in range(3)]
        answers.append(client.exchange(raw_request("GET", "/healthz")))
    finally:
        client.close()
    assert [answer[:12] for answer, _ in answers] == [b"HTTP/1.1 200"] * 4
    assert b'"uid":"one-record"' in answers[0][0]
    assert [records for _, records in answers] == [1, 1, 1, 1]


# --------------------------------------------------------------------------- 3. bad input


def test_content_type_must_be_json_charset_parameter_allowed(
    shared: Shared, client: httpx.Client
) -> None:
    review = admission_review(pod("app"))
    assert post(client, review, {"Content-Type": "text/plain"}).status_code == 415
    logged = wait_until(
        lambda: [line for line in shared.server.log_lines() if "expected application/json" in line],
        5,
        "the 415 log line",
    )
    # Upstream's line, with the header as text (no Python bytes repr).
    assert 'msg="Content-Type=text/plain, expected application/json"' in logged[-1]
    accepted = post(client, review, {"Content-Type": "application/json; charset=utf-8"})
    assert is_mutated_for_app(accepted)


def test_body_over_max_request_bytes_is_413_with_content_length_and_when_chunked(
    shared: Shared, client: httpx.Client
) -> None:
    oversized = b" " * (MAX_REQUEST_BYTES + 1)
    declared = client.post("/mutate", content=oversized, headers=JSON)
    assert declared.request.headers["content-length"] == str(len(oversized))
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(4 * MAX_REQUEST_BYTES // 8192):
            yield b" " * 8192

    streamed = client.post("/mutate", content=chunks(), headers=JSON)
    assert streamed.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    # Each refusal is one line the operator can act on (which limit, which flag).
    logged = wait_until(
        lambda: [line for line in shared.server.log_lines() if "answered 413" in line],
        5,
        "the 413 log lines",
    )
    assert len(logged) >= 2 and "--max-request-bytes" in logged[-1]
    # A body of exactly the limit is read and reviewed.
    at_limit = orjson.dumps(admission_review(pod("app")))
    at_limit += b" " * (MAX_REQUEST_BYTES - len(at_limit))
    assert is_mutated_for_app(client.post("/mutate", content=at_limit, headers=JSON))


def test_malformed_reviews_are_denied_with_a_message_and_the_server_keeps_serving(
    shared: Shared, client: httpx.Client
) -> None:
    not_json = response_of(post(client, b"{this is not json"))["response"]
    assert not_json["allowed"] is False
    assert not_json["status"]["message"]

    no_request = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}
    denied = response_of(post(client, no_request))["response"]
    assert denied["allowed"] is False
    assert "request" in denied["status"]["message"]

    bad_pod = pod("app")
    bad_pod["spec"]["containers"] = "app"
    denied = response_of(post(client, admission_review(bad_pod, uid="uid-bad")))["response"]
    assert denied["allowed"] is False
    assert denied["uid"] == "uid-bad"
    assert "spec.containers" in denied["status"]["message"]

    assert shared.server.proc.poll() is None
    assert is_mutated_for_app(post(client, admission_review(pod("app"), uid="uid-after")))


# --------------------------------------------------------------------------- 4. replay parity


def parity_cases() -> dict[str, dict[str, Any]]:
    return {
        "annotated-sa": admission_review(pod("app"), uid="case-1"),
        "unannotated-sa": admission_review(pod("plain"), uid="case-2"),
        "unknown-sa": admission_review(pod("ghost"), uid="case-3"),
        "update-operation": admission_review(pod("app"), uid="case-4", operation="UPDATE"),
        "not-a-pod": admission_review(
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
            uid="case-5",
            kind="Deployment",
            group="apps",
            resource="deployments",
        ),
        "v1beta1": admission_review(pod("app"), uid="case-6", version="admission.k8s.io/v1beta1"),
    }


def test_replay_and_server_give_byte_identical_responses(
    shared: Shared, client: httpx.Client, tmp_path: Path
) -> None:
    files: dict[str, Path] = {}
    for name, review in parity_cases().items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_bytes(orjson.dumps(review, option=orjson.OPT_INDENT_2))
    replays = {
        name: subprocess.Popen(
            [sys.executable, "-m", "webhook", "replay", "--objects", str(shared.objects), str(f)],
            cwd=serverproc.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, f in files.items()
    }
    served: dict[str, bytes] = {}
    for name, proc in replays.items():
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"{name}: {stderr.decode()}"
        answer = post(client, files[name].read_bytes())
        assert answer.status_code == 200
        served[name] = answer.content
        assert stdout == served[name] + b"\n", name
    # The cases cover what they are named for.
    mutated = {name for name, body in served.items() if b'"patch"' in body}
    assert mutated == {"annotated-sa", "v1beta1"}
    assert served["v1beta1"].startswith(b'{"apiVersion":"admission.k8s.io/v1beta1"')


# --------------------------------------------------------------------------- 5. cert reload


@dataclass
class KeepAliveTraffic:
    """Reviews sent back to back on long-lived connections from background threads."""

    port: int
    ca_pem: bytes
    connections: int = 3
    successes: int = 0
    failures: list[str] = field(default_factory=list)
    reconnects: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        conn = http.client.HTTPSConnection(
            HOST, self.port, context=client_context(self.ca_pem), timeout=10
        )
        body = orjson.dumps(admission_review(pod("app"), uid="in-flight"))
        first_socket = None
        try:
            while not self.stop.is_set():
                try:
                    conn.request("POST", "/mutate", body=body, headers=JSON)
                    if first_socket is None:
                        first_socket = conn.sock
                    elif conn.sock is not first_socket:
                        with self.lock:
                            self.reconnects += 1
                        first_socket = conn.sock
                    reply = conn.getresponse()
                    data = reply.read()
                except Exception as err:
                    with self.lock:
                        self.failures.append(repr(err))
                    conn.close()
                    continue
                with self.lock:
                    if reply.status == 200 and b'"patch"' in data:
                        self.successes += 1
                    else:
                        self.failures.append(f"{reply.status}: {data[:200]!r}")
        finally:
            conn.close()

    def start(self) -> None:
        for _ in range(self.connections):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self.threads.append(thread)

    def count(self) -> int:
        with self.lock:
            return self.successes

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
        assert not any(t.is_alive() for t in self.threads)


def _swap_files_with_os_replace(cert_dir: Path, key_pem: bytes, cert_pem: bytes) -> None:
    for name, data in (("tls.key", key_pem), ("tls.crt", cert_pem)):
        temporary = cert_dir / f".{name}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, cert_dir / name)


def _kubernetes_volume(cert_dir: Path, generation: int, key_pem: bytes, cert_pem: bytes) -> None:
    """Write a new `..<timestamp>` dir and atomically point `..data` at it (AtomicWriter)."""
    cert_dir.mkdir(exist_ok=True)
    data_dir = cert_dir / f"..2026_01_01_00_00_0{generation}.00000000{generation}"
    data_dir.mkdir()
    (data_dir / "tls.key").write_bytes(key_pem)
    (data_dir / "tls.crt").write_bytes(cert_pem)
    data_link = cert_dir / "..data"
    old = data_link.resolve() if data_link.is_symlink() else None
    temporary = cert_dir / "..data_tmp"
    os.symlink(data_dir.name, temporary)
    os.replace(temporary, data_link)
    for name in ("tls.crt", "tls.key"):
        if not (cert_dir / name).is_symlink():
            os.symlink(f"..data/{name}", cert_dir / name)
    if old is not None:
        shutil.rmtree(old)


@pytest.mark.parametrize("swap", ["os-replace", "kubernetes-symlink-swap"])
def test_certificate_reload_serves_the_new_ca_without_failing_in_flight_requests(
    start_server: StartServer, tmp_path: Path, swap: str
) -> None:
    cert_dir = tmp_path / "mounted-secret"
    old_ca, old_serving = new_pair(ca_name="old-ca")
    if swap == "os-replace":
        cert_dir.mkdir()
        _swap_files_with_os_replace(cert_dir, old_serving.key_pem, old_serving.cert_pem)
    else:
        _kubernetes_volume(cert_dir, 1, old_serving.key_pem, old_serving.cert_pem)
        assert os.readlink(cert_dir / "tls.crt") == "..data/tls.crt"
    cert_files = CertFiles(
        old_ca, old_serving, cert_dir / "ca.crt", cert_dir / "tls.crt", cert_dir / "tls.key"
    )
    server = start_server(cert_files=cert_files)

    traffic = KeepAliveTraffic(server.port, old_ca.cert_pem)
    traffic.start()
    try:
        wait_until(lambda: traffic.count() >= 20, 10, "background reviews to flow")
        new_ca, new_serving = new_pair(ca_name="new-ca")
        if swap == "os-replace":
            _swap_files_with_os_replace(cert_dir, new_serving.key_pem, new_serving.cert_pem)
        else:
            _kubernetes_volume(cert_dir, 2, new_serving.key_pem, new_serving.cert_pem)

        new_client = client_context(new_ca.cert_pem)
        wait_until(
            lambda: tls_handshake(server.port, new_client),
            10,
            "a new connection verified against the NEW CA",
            interval=0.1,
        )
        after_swap = traffic.count()
        wait_until(lambda: traffic.count() >= after_swap + 20, 10, "reviews after the reload")
    finally:
        traffic.finish()
    assert traffic.failures == []
    assert traffic.reconnects == 0, "keep-alive connections were dropped by the reload"
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(server.port, client_context(old_ca.cert_pem))


# --------------------------------------------------------------------------- 6. SIGTERM


def _server_has_read_everything(server_port: int, client_port: int) -> bool | None:
    """True once the server's end of the connection has an empty receive queue (the request
    was read and dispatched); None when /proc/net/tcp is unavailable."""
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for row in table:
        fields = row.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            return int(fields[4].split(":")[1], 16) == 0
    return False


def test_sigterm_drains_in_flight_closes_idle_connections_and_exits_0(
    start_server: StartServer,
) -> None:
    server = start_server(extra_args=("--service-account-lookup-grace-period=3s",))
    ctx = client_context(server.ca_pem)

    idle = http.client.HTTPSConnection(HOST, server.port, context=ctx, timeout=10)
    idle.request("GET", "/healthz")
    assert idle.getresponse().read() == b"ok"

    slow = http.client.HTTPSConnection(HOST, server.port, context=ctx, timeout=20)
    slow.request(
        "POST",
        "/mutate",
        body=orjson.dumps(admission_review(pod("not-there-yet"), uid="uid-slow")),
        headers=JSON,
    )
    assert slow.sock is not None
    slow_port = slow.sock.getsockname()[1]
    started = time.monotonic()
    result: dict[str, Any] = {}

    def read_slow_response() -> None:
        try:
            reply = slow.getresponse()
            result["status"], result["body"] = reply.status, reply.read()
        except Exception as err:
            result["error"] = repr(err)
        finally:
            slow.close()

    reader = threading.Thread(target=read_slow_response, daemon=True)
    reader.start()
    if _server_has_read_everything(server.port, slow_port) is None:  # pragma: no cover
        time.sleep(0.5)  # no way to observe the server's receive queue here
    else:
        wait_until(
            lambda: _server_has_read_everything(server.port, slow_port),
            2,
            "the server to read the slow request",
        )
    assert "status" not in result, "the request was not slow"

    signalled = time.monotonic()
    server.send_signal(signal.SIGTERM)

    assert idle.sock is not None
    idle.sock.settimeout(2)
    try:
        eof = idle.sock.recv(1) == b""
    except (ssl.SSLEOFError, ConnectionResetError):
        eof = True
    except TimeoutError:
        eof = False
    assert eof, "the idle keep-alive connection was not closed within 2s of SIGTERM"
    assert time.monotonic() - signalled < 2
    idle.close()  # as a client does on EOF

    def refused() -> bool:
        try:
            socket.create_connection((HOST, server.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(refused, 2, "new connections to be refused")

    reader.join(15)
    assert result.get("status") == 200, result
    assert orjson.loads(result["body"])["response"] == {"uid": "uid-slow", "allowed": True}
    assert time.monotonic() - started >= 2.5, "the grace period did not hold the request"

    try:
        code = server.proc.wait(max(0.0, signalled + 12 - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail("the server did not exit within 12s of SIGTERM")
    assert code == 0


def test_sigterm_with_only_an_idle_connection_exits_without_waiting_for_the_drain_timeout(
    start_server: StartServer,
) -> None:
    server = start_server()
    idle = http.client.HTTPSConnection(
        HOST, server.port, context=client_context(server.ca_pem), timeout=10
    )
    try:
        idle.request("GET", "/healthz")
        assert idle.getresponse().read() == b"ok"
        server.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail("nothing was in flight, yet the server was still draining after 5s")
        assert code == 0
    finally:
        idle.close()  # lets the server finish at once if it is still waiting for us


# --------------------------------------------------------------------------- 7. metrics & probes


UPSTREAM_COUNTERS = (
    "http_request_count",
    "pod_identity_webhook_pod_count",
    "pod_identity_webhook_missing_sa_count",
)


def scrape_after_reviews(shared: Shared, client: httpx.Client) -> str:
    """/metrics after one mutated review and one for a missing ServiceAccount."""
    assert is_mutated_for_app(post(client, admission_review(pod("app"), uid="m-1")))
    unknown = response_of(post(client, admission_review(pod("nobody"), uid="m-2")))
    assert "patch" not in unknown["response"]
    with shared.server.metrics_client() as plain:
        scrape = plain.get("/metrics")
    assert scrape.status_code == 200
    return scrape.text


def test_metrics_port_exposes_samples_under_upstream_names_without_total_suffix(
    shared: Shared, client: httpx.Client
) -> None:
    text = scrape_after_reviews(shared, client)
    requests = metric_samples(text, "http_request_count")
    assert requests['{code="200",path="/mutate",verb="POST"}'] >= 2
    assert metric_samples(text, "http_request_latencies_bucket")
    pods = metric_samples(text, "pod_identity_webhook_pod_count")
    assert pods['{method="sts_web_identity"}'] >= 1
    assert metric_samples(text, "pod_identity_webhook_missing_sa_count")[""] >= 1
    for counter in UPSTREAM_COUNTERS:
        assert not metric_samples(text, f"{counter}_total"), counter


def test_upstream_counters_are_declared_as_counters_under_their_exact_names(
    shared: Shared, client: httpx.Client
) -> None:
    text = scrape_after_reviews(shared, client)
    for counter in UPSTREAM_COUNTERS:
        assert f"# TYPE {counter} counter" in text.splitlines(), counter
        assert f"{counter}_total" not in text, counter
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for counter in UPSTREAM_COUNTERS:
        assert families[counter].type == "counter"
        # prometheus_client's own parser renames counter samples to `_total` (its convention);
        # the text above is what Prometheus itself reads.
        assert families[counter].samples, counter


def test_health_and_readiness_probes(client: httpx.Client) -> None:
    healthz = client.get("/healthz")
    assert (healthz.status_code, healthz.text) == (200, "ok")
    assert client.get("/readyz").status_code == 200


def test_debug_cache_handler_exists_only_with_enable_debugging_handlers(
    shared: Shared, start_server: StartServer
) -> None:
    with shared.server.metrics_client() as plain:
        assert plain.get("/debug/alpha/cache").status_code == 404
    debugging = start_server(extra_args=("--enable-debugging-handlers",))
    with debugging.metrics_client() as plain:
        cache = plain.get("/debug/alpha/cache")
    assert cache.status_code == 200
    assert cache.json()["serviceAccounts"]["default/app"]["RoleARN"] == ROLE_ARN


# --------------------------------------------------------------------------- 8. objects reload


def test_objects_file_edit_is_picked_up_without_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    objects = tmp_path / "watched-objects.json"
    write_objects(objects, BASE_OBJECTS)
    server = start_server(objects=objects)
    review = admission_review(pod("late"), uid="uid-late")
    with server.client() as https:
        assert "patch" not in response_of(post(https, review))["response"]
        write_objects(
            objects,
            [
                *BASE_OBJECTS,
                service_account("late", annotations={ROLE_ANNOTATION: ROLE_ARN + "-late"}),
            ],
        )
        response = wait_until(
            lambda: (r := response_of(post(https, review))["response"]).get("patch") and r,
            6,
            "the new ServiceAccount to be used",
            interval=0.2,
        )
    env = jsonpatch.apply_patch(pod("late"), patch_ops(response))["spec"]["containers"][0]["env"]
    assert {"name": "AWS_ROLE_ARN", "value": ROLE_ARN + "-late"} in env


# --------------------------------------------------------------------------- 9. logs


def test_each_review_logs_one_line_with_pod_namespace_service_account_and_mutated_but_no_secrets(
    shared: Shared, client: httpx.Client
) -> None:
    secret_env = [{"name": "AWS_SESSION_TOKEN", "value": FAKE_JWT}]
    reviews = {
        "log-1": (admission_review(pod("app", name="web-1", env=secret_env), uid="log-1"), "app"),
        "log-2": (admission_review(pod("plain", name="web-2"), uid="log-2"), "plain"),
        "log-3": (admission_review(pod("ghost", name="web-3"), uid="log-3"), "ghost"),
    }
    patches = []
    for uid, (review, _) in reviews.items():
        response = response_of(post(client, review))["response"]
        assert response["uid"] == uid
        if "patch" in response:
            patches.append(response["patch"])
    assert patches

    def review_lines() -> dict[str, list[str]] | None:
        lines = shared.server.log_lines()
        found = {uid: [line for line in lines if f"uid={uid} " in line] for uid in reviews}
        return found if all(found.values()) else None

    found = wait_until(review_lines, 5, "the review log lines")
    for uid, (_, account) in reviews.items():
        assert len(found[uid]) == 1, found[uid]
        line = found[uid][0]
        number = uid.split("-")[1]
        assert f" pod=web-{number} " in line
        assert " namespace=default " in line
        assert f" serviceAccount={account} " in line
        assert re.search(r" mutated=(true|false)( |$)", line)
    assert " mutated=true" in found["log-1"][0]
    assert " mutated=false" in found["log-2"][0]

    everything = shared.server.log_text()
    for patch in patches:
        assert patch not in everything
        assert patch[:24] not in everything
    assert FAKE_JWT not in everything
    assert not JWT_PATTERN.search(everything)
