"""Certificate tooling: `webhook.certs` and `pod-identity-webhook certs generate`.

What the API server needs from the webhook's certificate: a chain it can verify from the
`caBundle`, names matching the Service DNS form it dials, server authentication, a validity
window, and a CA that survives regeneration so the `caBundle` in the cluster stays valid.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook import certs
from webhook.cli import main

REPO = Path(__file__).resolve().parent.parent
SERVICE = "pod-identity-webhook"
NAMESPACE = "kube-system"
SERVICE_NAMES = [
    "pod-identity-webhook",
    "pod-identity-webhook.kube-system",
    "pod-identity-webhook.kube-system.svc",
    "pod-identity-webhook.kube-system.svc.cluster.local",
]
NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)

_E = TypeVar("_E", bound=x509.ExtensionType)


# --------------------------------------------------------------------------- helpers


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[_Generate]:
    yield _Generate(tmp_path / "out", capsys)


class _Generate:
    """`certs generate --service SERVICE --namespace NAMESPACE --out DIR ...extra`."""

    def __init__(self, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.out = out
        self.paths = certs.BundlePaths.in_dir(out)
        self._capsys = capsys

    def __call__(self, *extra: str) -> Run:
        self._capsys.readouterr()
        argv = ["certs", "generate", "--service", SERVICE, "--namespace", NAMESPACE]
        code = main([*argv, "--out", str(self.out), *extra])
        captured = self._capsys.readouterr()
        return Run(code, captured.out, captured.err)

    def ok(self, *extra: str) -> Run:
        run = self(*extra)
        assert run.code == 0, run.stderr
        return run

    def serving(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.paths.tls_cert.read_bytes())

    def ca(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.paths.ca_cert.read_bytes())


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def extension(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E]:
    return cert.extensions.get_extension_for_class(kind)


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    names = extension(cert, x509.SubjectAlternativeName).value
    dns = names.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return dns, ips


@contextlib.contextmanager
def tls_server(cert_file: Path, key_file: Path) -> Iterator[int]:
    """A TLS server on 127.0.0.1 presenting `cert_file`; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                # A client that rejects the certificate aborts the handshake: expected.
                with (
                    contextlib.suppress(OSError),
                    context.wrap_socket(conn, server_side=True) as tls,
                ):
                    tls.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def tls_hello(port: int, ca_file: Path, server_hostname: str) -> bytes:
    """Connect like a careful client trusting only `ca_file`; return the server's greeting."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(5)


# --------------------------------------------------------------------------- names


def test_service_dns_names_are_every_form_a_cluster_client_may_dial() -> None:
    assert certs.service_dns_names(SERVICE, NAMESPACE) == SERVICE_NAMES


@pytest.mark.parametrize(
    ("service", "namespace"),
    [("Webhook", "ns"), ("1webhook", "ns"), ("webhook", "Bad_NS"), ("", "ns"), ("a" * 64, "ns")],
)
def test_service_dns_names_reject_names_kubernetes_would_reject(
    service: str, namespace: str
) -> None:
    with pytest.raises(ValueError, match="invalid"):
        certs.service_dns_names(service, namespace)


def test_split_sans_sorts_names_from_addresses_and_normalizes_them() -> None:
    dns, ips = certs.split_sans(["Webhook.Example.com", "10.0.0.7", "*.example.org", "::FFFF:1"])
    assert dns == ["webhook.example.com", "*.example.org"]
    assert ips == ["10.0.0.7", "::ffff:1"]


@pytest.mark.parametrize(
    "value", ["", "has space", "under_score.example", "a..b", "-lead.com", "*"]
)
def test_split_sans_rejects_values_that_are_neither_name_nor_address(value: str) -> None:
    with pytest.raises(ValueError, match="not a DNS name or IP address"):
        certs.split_sans([value])


def test_serving_cert_names_every_service_dns_form(generate: _Generate) -> None:
    generate.ok()
    cert = generate.serving()
    assert sans(cert) == (SERVICE_NAMES, [])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SERVICE


def test_localhost_flag_adds_localhost_and_both_loopback_addresses(generate: _Generate) -> None:
    generate.ok("--localhost")
    assert sans(generate.serving()) == ([*SERVICE_NAMES, "localhost"], ["127.0.0.1", "::1"])


def test_extra_sans_add_dns_names_and_ip_addresses_once_each(generate: _Generate) -> None:
    generate.ok(
        "--extra-san",
        "webhook.example.com",
        "--extra-san",
        "10.96.0.10",
        "--extra-san",
        "fd00::10",
        "--extra-san",
        SERVICE,  # already named: not repeated
    )
    assert sans(generate.serving()) == (
        [*SERVICE_NAMES, "webhook.example.com"],
        ["10.96.0.10", "fd00::10"],
    )


def test_library_serving_cert_carries_ip_sans_as_ip_addresses_not_names() -> None:
    ca = certs.generate_ca("test CA", 30)
    serving = certs.generate_serving_cert(ca, ["localhost"], ["127.0.0.1", "::1"], 30)
    names = extension(serving.certificate, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]


def test_serving_cert_needs_at_least_one_name() -> None:
    ca = certs.generate_ca("test CA", 30)
    with pytest.raises(ValueError, match="at least one"):
        certs.generate_serving_cert(ca, [], [], 30)


# --------------------------------------------------------------------------- usages


def test_serving_cert_is_for_tls_server_authentication_only(generate: _Generate) -> None:
    generate.ok()
    cert = generate.serving()

    key_usage = extension(cert, x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.digital_signature
    assert not key_usage.value.key_encipherment  # ECDSA keys do not encipher
    assert not key_usage.value.key_cert_sign
    assert not key_usage.value.crl_sign

    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]

    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False


def test_serving_key_is_ecdsa_p256_by_default(generate: _Generate) -> None:
    generate.ok()
    public_key = generate.serving().public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"


def test_rsa_serving_key_is_2048_bits_and_may_also_encipher_keys(generate: _Generate) -> None:
    generate.ok("--key-type", "rsa")
    cert = generate.serving()
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert public_key.key_size == 2048
    key_usage = extension(cert, x509.KeyUsage).value
    assert key_usage.digital_signature
    assert key_usage.key_encipherment


def test_serving_cert_is_signed_by_the_ca_and_names_the_ca_key(generate: _Generate) -> None:
    generate.ok()
    cert, ca = generate.serving(), generate.ca()
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject
    authority = extension(cert, x509.AuthorityKeyIdentifier).value
    assert authority.key_identifier == extension(ca, x509.SubjectKeyIdentifier).value.digest


def test_ca_is_self_signed_and_may_only_sign_certificates(generate: _Generate) -> None:
    generate.ok()
    ca = generate.ca()
    ca.verify_directly_issued_by(ca)

    constraints = extension(ca, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0

    key_usage = extension(ca, x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.key_cert_sign
    assert key_usage.value.crl_sign
    assert not key_usage.value.digital_signature

    assert extension(ca, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    )


# --------------------------------------------------------------------------- validity


def test_serving_cert_is_valid_for_the_requested_days_from_five_minutes_ago() -> None:
    ca = certs.generate_ca("test CA", 3650, now=NOW - timedelta(days=1))
    serving = certs.generate_serving_cert(ca, ["svc"], [], 30, now=NOW)
    assert serving.not_valid_before == NOW - timedelta(minutes=5)
    assert serving.not_valid_after == NOW + timedelta(days=30)


def test_ca_is_valid_for_its_own_days_from_five_minutes_ago() -> None:
    ca = certs.generate_ca("test CA", 3650, now=NOW)
    assert ca.not_valid_before == NOW - timedelta(minutes=5)
    assert ca.not_valid_after == NOW + timedelta(days=3650)


def test_cli_days_sets_the_serving_cert_lifetime(generate: _Generate) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    generate.ok("--days", "30")
    after = datetime.now(UTC)
    cert = generate.serving()
    assert before - timedelta(minutes=5) <= cert.not_valid_before_utc <= after
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30, minutes=5)
    assert generate.ca().not_valid_after_utc >= before + timedelta(days=3650)


def test_serving_cert_never_outlives_its_ca() -> None:
    ca = certs.generate_ca("short CA", 10, now=NOW)
    serving = certs.generate_serving_cert(ca, ["svc"], [], 365, now=NOW)
    assert serving.not_valid_after == ca.not_valid_after


def test_an_expired_ca_cannot_sign() -> None:
    ca = certs.generate_ca("old CA", 10, now=NOW - timedelta(days=20))
    with pytest.raises(certs.CertificateError, match="expired"):
        certs.generate_serving_cert(ca, ["svc"], [], 30, now=NOW)


def test_a_leaf_certificate_cannot_sign() -> None:
    ca = certs.generate_ca("test CA", 30)
    leaf = certs.generate_serving_cert(ca, ["svc"], [], 30)
    with pytest.raises(certs.CertificateError, match="not a CA"):
        certs.generate_serving_cert(leaf, ["other"], [], 30)


@pytest.mark.parametrize("days", [0, -1, certs.MAX_DAYS + 1])
def test_days_must_be_positive_and_bounded(days: int) -> None:
    with pytest.raises(ValueError, match="days"):
        certs.generate_ca("test CA", days)


# --------------------------------------------------------------------------- real TLS


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
@pytest.mark.parametrize("hostname", [SERVICE_NAMES[2], SERVICE_NAMES[0], SERVICE_NAMES[3]])
def test_python_ssl_trusts_the_chain_for_the_service_name(
    generate: _Generate, key_type: str, hostname: str
) -> None:
    generate.ok("--key-type", key_type)
    with tls_server(generate.paths.tls_cert, generate.paths.tls_key) as port:
        assert tls_hello(port, generate.paths.ca_cert, hostname) == b"hello"


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_python_ssl_trusts_the_chain_for_localhost_with_the_localhost_flag(
    generate: _Generate, hostname: str
) -> None:
    generate.ok("--localhost")
    with tls_server(generate.paths.tls_cert, generate.paths.tls_key) as port:
        assert tls_hello(port, generate.paths.ca_cert, hostname) == b"hello"


@pytest.mark.parametrize(
    "hostname", ["other.kube-system.svc", "pod-identity-webhook.default.svc", "127.0.0.1"]
)
def test_python_ssl_rejects_a_hostname_not_in_the_sans(generate: _Generate, hostname: str) -> None:
    generate.ok()
    with (
        tls_server(generate.paths.tls_cert, generate.paths.tls_key) as port,
        pytest.raises(ssl.SSLCertVerificationError, match="match"),
    ):
        tls_hello(port, generate.paths.ca_cert, hostname)


def test_python_ssl_rejects_the_chain_under_a_different_ca(
    generate: _Generate, tmp_path: Path
) -> None:
    generate.ok()
    stranger = tmp_path / "stranger-ca.crt"
    stranger.write_bytes(certs.generate_ca("someone else", 30).cert_pem)
    with (
        tls_server(generate.paths.tls_cert, generate.paths.tls_key) as port,
        pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"),
    ):
        tls_hello(port, stranger, SERVICE_NAMES[2])


# --------------------------------------------------------------------------- CA reuse


def test_regenerating_reuses_the_ca_so_the_ca_bundle_stays_stable(generate: _Generate) -> None:
    first = generate.ok()
    ca_cert, ca_key = generate.paths.ca_cert.read_bytes(), generate.paths.ca_key.read_bytes()
    first_serving = generate.paths.tls_cert.read_bytes()

    second = generate.ok("--localhost")

    assert generate.paths.ca_cert.read_bytes() == ca_cert
    assert generate.paths.ca_key.read_bytes() == ca_key
    assert generate.paths.tls_cert.read_bytes() != first_serving
    assert second.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]
    assert "reused" in second.stderr
    # the renewed serving certificate chains to the unchanged CA
    generate.serving().verify_directly_issued_by(generate.ca())


def test_new_ca_flag_replaces_the_ca_and_the_ca_bundle(generate: _Generate) -> None:
    first = generate.ok()
    ca_cert = generate.paths.ca_cert.read_bytes()
    second = generate.ok("--new-ca")
    assert generate.paths.ca_cert.read_bytes() != ca_cert
    assert second.stdout.splitlines()[-1] != first.stdout.splitlines()[-1]
    generate.serving().verify_directly_issued_by(generate.ca())


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.ca_cert.write_text("garbage"), "not a PEM certificate"),
        (lambda p: p.ca_key.unlink(), "ca.key is missing"),
        (
            lambda p: p.ca_key.write_bytes(certs.generate_ca("other", 30).key_pem),
            "does not match",
        ),
        (
            lambda p: p.ca_cert.write_bytes(
                certs.generate_serving_cert(
                    certs.CertKeyPair.load(p.ca_cert, p.ca_key), ["x"], [], 30
                ).cert_pem
            ),
            "does not match",
        ),
    ],
    ids=["unparsable", "key-missing", "key-mismatch", "not-the-ca"],
)
def test_an_unusable_ca_is_replaced_and_the_reason_is_said(
    generate: _Generate, damage: Callable[[certs.BundlePaths], object], reason: str
) -> None:
    generate.ok()
    damage(generate.paths)
    run = generate.ok()
    assert "not reusing the CA" in run.stderr
    assert reason in run.stderr
    generate.serving().verify_directly_issued_by(generate.ca())


def test_a_ca_expiring_before_the_serving_cert_would_is_not_reused(generate: _Generate) -> None:
    generate.ok("--ca-days", "10", "--days", "5")
    ca_cert = generate.paths.ca_cert.read_bytes()
    run = generate.ok("--days", "30")
    assert "expires" in run.stderr
    assert generate.paths.ca_cert.read_bytes() != ca_cert


def test_load_ca_returns_none_when_the_directory_has_no_ca(tmp_path: Path) -> None:
    assert certs.load_ca(tmp_path) is None
    assert certs.load_ca(tmp_path / "does-not-exist") is None


def test_load_ca_refuses_a_non_ca_certificate(tmp_path: Path) -> None:
    ca = certs.generate_ca("test CA", 30)
    leaf = certs.generate_serving_cert(ca, ["svc"], [], 30)
    certs.write_bundle(tmp_path, leaf, leaf)
    with pytest.raises(certs.CertificateError, match="not a CA"):
        certs.load_ca(tmp_path)


# --------------------------------------------------------------------------- files


def test_private_keys_are_mode_0600_and_certificates_0644(generate: _Generate) -> None:
    generate.ok()
    mode = {path.name: stat.S_IMODE(path.stat().st_mode) for path in generate.out.iterdir()}
    assert mode == {"ca.crt": 0o644, "ca.key": 0o600, "tls.crt": 0o644, "tls.key": 0o600}


def test_keys_are_unencrypted_pkcs8_pem(generate: _Generate) -> None:
    generate.ok()
    for key_file in (generate.paths.ca_key, generate.paths.tls_key):
        pem = key_file.read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
        serialization.load_pem_private_key(pem, password=None)


def test_write_bundle_creates_the_directory_and_returns_the_paths(tmp_path: Path) -> None:
    ca = certs.generate_ca("test CA", 30)
    serving = certs.generate_serving_cert(ca, ["svc"], [], 30)
    paths = certs.write_bundle(tmp_path / "a" / "b", ca, serving)
    assert paths == certs.BundlePaths.in_dir(tmp_path / "a" / "b")
    assert paths.ca_cert.read_bytes() == ca.cert_pem
    assert paths.ca_key.read_bytes() == ca.key_pem
    assert paths.tls_cert.read_bytes() == serving.cert_pem
    assert paths.tls_key.read_bytes() == serving.key_pem
    loaded = certs.CertKeyPair.load(paths.tls_cert, paths.tls_key)
    assert (loaded.certificate, loaded.key_pem) == (serving.certificate, serving.key_pem)


def test_write_bundle_replaces_each_file_in_one_step_and_leaves_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = certs.generate_ca("test CA", 30)
    old = certs.generate_serving_cert(ca, ["old"], [], 30)
    certs.write_bundle(tmp_path, ca, old)

    replaced: list[str] = []
    real_replace = os.replace

    def replace(src: str, dst: str | os.PathLike[str]) -> None:
        # at the moment of the swap the target still holds the complete old content
        assert Path(src).parent == tmp_path
        replaced.append(Path(dst).name)
        if Path(dst).name == certs.TLS_CERT_FILE:
            assert Path(dst).read_bytes() == old.cert_pem
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    new = certs.generate_serving_cert(ca, ["new"], [], 30)
    with pytest.raises(OSError, match="No space"):
        certs.write_bundle(tmp_path, ca, new)

    assert replaced == ["ca.key", "ca.crt", "tls.key", "tls.crt"]
    assert (tmp_path / "tls.crt").read_bytes() == old.cert_pem  # untouched, not truncated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]


def test_needs_renewal_when_missing_unusable_or_expiring_soon(tmp_path: Path) -> None:
    ca = certs.generate_ca("test CA", 3650, now=NOW - timedelta(days=1))
    serving = certs.generate_serving_cert(ca, ["svc"], [], 30, now=NOW)
    paths = certs.write_bundle(tmp_path, ca, serving)
    week = timedelta(days=7)

    assert not certs.needs_renewal(paths.tls_cert, paths.tls_key, within=week, now=NOW)
    assert certs.needs_renewal(
        paths.tls_cert, paths.tls_key, within=week, now=NOW + timedelta(days=24)
    )
    assert certs.needs_renewal(tmp_path / "missing.crt", within=week, now=NOW)
    assert certs.needs_renewal(paths.tls_cert, paths.ca_key, within=week, now=NOW)  # wrong key
    paths.tls_key.unlink()
    assert certs.needs_renewal(paths.tls_cert, paths.tls_key, within=week, now=NOW)


# --------------------------------------------------------------------------- CLI output


def test_cli_prints_the_ca_bundle_alone_on_the_last_stdout_line(generate: _Generate) -> None:
    run = generate.ok()
    last = run.stdout.splitlines()[-1]
    assert last == last.strip() and " " not in last
    pem = base64.b64decode(last, validate=True)
    assert pem == generate.paths.ca_cert.read_bytes()
    assert x509.load_pem_x509_certificate(pem).subject == generate.ca().subject
    assert (
        certs.ca_bundle_b64(certs.CertKeyPair.load(generate.paths.ca_cert, generate.paths.ca_key))
        == last
    )


def test_cli_summary_goes_to_stderr(generate: _Generate) -> None:
    run = generate.ok()
    assert run.stdout.count("\n") == 1
    assert str(generate.paths.tls_cert) in run.stderr
    assert "DNS:pod-identity-webhook.kube-system.svc" in run.stderr


def test_python_dash_m_webhook_runs_the_command(tmp_path: Path) -> None:
    argv = ["certs", "generate", "--service", "svc", "--namespace", "ns", "--out", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "webhook", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert base64.b64decode(result.stdout.splitlines()[-1]).startswith(b"-----BEGIN CERTIFICATE")


# --------------------------------------------------------------------------- Secret


def _check_tls_secret(manifest: dict[str, object], out: certs.BundlePaths, name: str) -> None:
    assert manifest["apiVersion"] == "v1"
    assert manifest["kind"] == "Secret"
    assert manifest["type"] == "kubernetes.io/tls"
    assert manifest["metadata"] == {"name": name, "namespace": NAMESPACE}
    data = manifest["data"]
    assert isinstance(data, dict)
    assert sorted(data) == ["ca.crt", "tls.crt", "tls.key"]
    assert base64.b64decode(data["tls.crt"]) == out.tls_cert.read_bytes()
    assert base64.b64decode(data["tls.key"]) == out.tls_key.read_bytes()
    assert base64.b64decode(data["ca.crt"]) == out.ca_cert.read_bytes()


def test_secret_manifest_is_a_kubernetes_tls_secret_in_yaml(
    generate: _Generate, tmp_path: Path
) -> None:
    target = tmp_path / "secret.yaml"
    generate.ok("--secret-manifest", str(target))
    _check_tls_secret(yaml.safe_load(target.read_text()), generate.paths, f"{SERVICE}-tls")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # it holds a private key


def test_secret_manifest_is_json_when_the_file_ends_in_json(
    generate: _Generate, tmp_path: Path
) -> None:
    target = tmp_path / "secret.json"
    generate.ok("--secret-manifest", str(target), "--secret-name", "webhook-certs")
    _check_tls_secret(json.loads(target.read_text()), generate.paths, "webhook-certs")


def test_secret_manifest_dash_prints_yaml_before_the_ca_bundle_line(generate: _Generate) -> None:
    run = generate.ok("--secret-manifest", "-")
    *manifest_lines, last = run.stdout.splitlines()
    _check_tls_secret(yaml.safe_load("\n".join(manifest_lines)), generate.paths, f"{SERVICE}-tls")
    assert base64.b64decode(last) == generate.paths.ca_cert.read_bytes()


def test_secret_manifest_library_shape() -> None:
    ca = certs.generate_ca("test CA", 30)
    serving = certs.generate_serving_cert(ca, ["svc"], [], 30)
    manifest = certs.secret_manifest("svc-tls", "ns", serving, ca)
    assert manifest == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "svc-tls", "namespace": "ns"},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(serving.cert_pem).decode(),
            "tls.key": base64.b64encode(serving.key_pem).decode(),
            "ca.crt": certs.ca_bundle_b64(ca),
        },
    }
    assert yaml.safe_load(certs.render_manifest(manifest, "yaml")) == manifest
    assert json.loads(certs.render_manifest(manifest, "json")) == manifest


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--days", "0"], "--days must be from 1"),
        (["--days", "-5"], "--days must be from 1"),
        (["--ca-days", "0"], "--ca-days must be from 1"),
        (["--extra-san", "not a name"], "--extra-san: not a DNS name or IP address: 'not a name'"),
        (["--extra-san", "bad_name.example"], "--extra-san: not a DNS name or IP address"),
        (["--secret-name", "x"], "--secret-name only applies with --secret-manifest"),
        (["--secret-manifest", "-", "--secret-name", "Bad_Name"], "invalid Secret name"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(
    generate: _Generate, extra: list[str], message: str
) -> None:
    run = generate(*extra)
    assert run.code == 2
    assert run.stdout == ""
    assert run.stderr.startswith("pod-identity-webhook certs: error: ")
    assert message in run.stderr
    assert run.stderr.count("\n") == 1
    assert not generate.out.exists()  # nothing written


def test_invalid_service_or_namespace_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    run = cli(capsys, "certs", "generate", "--service", "My_Service", "--namespace", "ns")
    assert run.code == 2
    assert "invalid service name 'My_Service'" in run.stderr
    run = cli(capsys, "certs", "generate", "--service", "svc", "--namespace", "Bad.NS")
    assert run.code == 2
    assert "invalid namespace 'Bad.NS'" in run.stderr


def test_unwritable_out_directory_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    argv = ["certs", "generate", "--service", "svc", "--namespace", "ns"]

    run = cli(capsys, *argv, "--out", str(blocker / "out"))
    assert run.code == 2
    assert f"cannot write certificates to {blocker / 'out'}" in run.stderr

    run = cli(capsys, *argv, "--out", str(blocker))
    assert run.code == 2
    assert f"--out {blocker} is not a directory" in run.stderr


def test_unwritable_secret_manifest_exits_2(generate: _Generate, tmp_path: Path) -> None:
    run = generate("--secret-manifest", str(tmp_path / "missing-dir" / "secret.yaml"))
    assert run.code == 2
    assert "cannot write --secret-manifest" in run.stderr


# --------------------------------------------------------------------------- dev script


@pytest.mark.slow
def test_dev_localhost_script_generates_once_then_keeps_fresh_certs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "CERTS_OUT": str(out)}
    script = [str(REPO / "certs" / "dev-localhost.sh")]

    def run_script() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", *script], env=env, capture_output=True, text=True, check=True
        )

    first = run_script()
    assert first.stdout.startswith("caBundle  ") and first.stdout.count("\n") == 1
    cert = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    assert sans(cert) == (
        [
            "pod-identity-webhook",
            "pod-identity-webhook.default",
            "pod-identity-webhook.default.svc",
            "pod-identity-webhook.default.svc.cluster.local",
            "localhost",
        ],
        ["127.0.0.1", "::1"],
    )
    serving = (out / "tls.crt").read_bytes()

    second = run_script()
    assert "keeping it" in second.stderr
    assert (out / "tls.crt").read_bytes() == serving

    (out / "tls.key").unlink()
    run_script()
    assert (out / "tls.crt").read_bytes() != serving
